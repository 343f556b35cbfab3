"""The model card (``model_card.json``) and the final weights that mark a run finished."""

from __future__ import annotations

import json
import shlex
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from torch import nn

from robust_uatt.data.datasets import Split
from robust_uatt.evaluation.predict import accuracy
from robust_uatt.models.zoo import Recipe, count_params
from robust_uatt.training.checkpoint import CARD, CONFIG, METRICS, WEIGHTS
from robust_uatt.utils.errors import UserError
from robust_uatt.utils.files import read_json, save_tensors, write_json
from robust_uatt.utils.runtime import versions


def write_model_card(recipe: Recipe, run_dir: Path, model: nn.Module, *, seed: int, device: Any,
                     splits: tuple[Split, Split, Split], started: float, console: Console,
                     extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Test accuracy (and on the lossless subset), data provenance and speed -> model_card.json, then the weights.
    ``extra``: further sections (adversarial training: ``{"adversarial": ...}``)."""
    train_set, val_set, test_set = splits
    t = recipe.train
    records = read_metrics(run_dir / METRICS)
    test_acc = accuracy(model, test_set.x, test_set.y, t["eval_batch_size"], device)
    card: dict[str, Any] = {
        "name": recipe.name, "description": recipe.description, "preset": recipe.preset,
        "recipe": recipe.to_dict(), "params": count_params(model), "seed": seed, "device": str(device),
        "data": {"dataset": recipe.dataset, "train_source": train_set.source, "train_n": len(train_set),
                 "train_lossless_fraction": train_set.lossless_fraction(), "test_source": test_set.source,
                 "test_n": len(test_set), "test_lossless_fraction": test_set.lossless_fraction(),
                 "validation": "holdout" if recipe.data["holdout"] else "test split", "val_n": len(val_set)},
        "accuracy": {"test": test_acc, "val_last_epoch": records[-1]["val_acc"] if records else None},
        "train_images_per_s": (sum(r["images_per_s"] for r in records) / len(records)) if records else None,
        "epochs": t["epochs"], "epochs_run": len(records), "versions": config_versions(run_dir),
        **(extra or {}),
    }
    if test_set.lossless is not None and bool(test_set.lossless.any()) and not bool(test_set.lossless.all()):
        exact = test_set.subset(test_set.lossless)
        card["accuracy"]["test_lossless"] = accuracy(model, exact.x, exact.y, t["eval_batch_size"], device)
        card["accuracy"]["test_lossless_n"] = len(exact)
    config = read_json(run_dir / CONFIG)
    card["wall_seconds_this_session"] = time.perf_counter() - started
    argv = config.get("argv") if isinstance(config, dict) else None
    card["command"] = " ".join(shlex.quote(str(a)) for a in argv) if isinstance(argv, list) else ""
    if isinstance(config, dict) and isinstance(config.get("extended_from"), dict):  # train --extend (extend.py)
        card["extended_from"] = config["extended_from"]
    state = {k: v for k, v in model.state_dict().items()}
    # The card first, the weights last: model.safetensors is what marks a run finished (a kill in between leaves a
    # resumable run, never a "finished" one without its card).
    write_json(run_dir / CARD, card)
    save_tensors(run_dir / WEIGHTS, state, {"recipe": recipe.to_dict(), "seed": seed, "kind": "robust-uatt model"})
    console.print(f"done: test accuracy {test_acc:.4f} on {len(test_set)} images; weights in {run_dir / WEIGHTS}",
                  markup=False)
    return card


def config_versions(run_dir: Path) -> dict[str, Any]:
    """The versions (git commit included) stamped when the run started: the code that trained the weights, even if
    HEAD moved before the run finished."""
    try:
        return dict(read_json(run_dir / CONFIG)["versions"])
    except Exception:  # a run dir without a readable config (should not happen): stamp what runs now
        return versions()


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The epoch records of metrics.jsonl; a damaged file (not UTF-8, not JSON, not records) is a UserError."""
    if not path.exists():
        return []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise UserError(f"{path}: damaged (not UTF-8 text)") from None
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, RecursionError):
            raise UserError(f"{path}: line {number} is damaged (not JSON)") from None
        if not isinstance(record, dict) or not all(
                isinstance(record.get(k), (int, float)) and not isinstance(record.get(k), bool)
                for k in ("val_acc", "images_per_s")):
            raise UserError(f"{path}: line {number} is not an epoch record (needs numeric val_acc, images_per_s)")
        records.append(record)
    return records
