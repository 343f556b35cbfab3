"""Ship a finished training run as zoo weights: fp16 safetensors + a model card (see ``models.shipped``).

``python -m robust_uatt.training.export RUN_DIR [--name NAME]`` writes ``zoo/weights/<name>.safetensors`` and
``<name>.json``. The card's accuracies are measured again on the fp16 weights (whole test split and its lossless
subset), each with its n and a 95% Clopper-Pearson interval.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

import torch

from robust_uatt.data.datasets import load_split
from robust_uatt.evaluation.intervals import clopper_pearson
from robust_uatt.evaluation.predict import correct
from robust_uatt.models.shipped import KIND, shipped_dir
from robust_uatt.models.zoo import Recipe, create_model
from robust_uatt.utils.errors import UserError
from robust_uatt.utils.files import (
    load_state_into,
    load_tensors,
    read_json,
    safe_component,
    save_tensors,
    write_json,
)


def accuracy_entry(correct: int, n: int) -> dict[str, Any]:
    low, high = clopper_pearson(correct, n)
    return {"accuracy": correct / n if n else math.nan, "correct": correct, "n": n, "ci95": [low, high]}


def to_fp16(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.half() if v.is_floating_point() else v for k, v in state.items()}


def _count_correct(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 500) -> int:
    """Test images (uint8) classified right (classes or whole sequences), judged as the harness judges clean points."""
    return int(correct(model, x, y, batch, torch.device("cpu")).sum())


def model_info(card: dict[str, Any], name: str) -> dict[str, Any]:
    """RobustBench's ModelInfo fields for a card: an adversarially trained model has its training threat model and
    eps (from the card's ``adversarial`` section), an undefended one eps null; no AutoAttack number yet."""
    recipe = card.get("recipe", {})
    adv = card.get("adversarial") if isinstance(card.get("adversarial"), dict) else {}
    eps = adv.get("eps") if isinstance(adv.get("eps"), (int, float)) and not isinstance(adv.get("eps"), bool) else None
    if adv and eps is not None:
        stop = adv.get("stopped_early")
        if isinstance(stop, dict):
            stop = f"epoch {stop.get('epoch')} collapsed, epoch {stop.get('restored_epoch')} restored"
        stopped = f"; the overfitting guard stopped it early: {stop}" if stop else ""
        footnote = (f"Adversarially trained ({adv.get('kind')}, {adv.get('norm', 'Linf')} eps {eps:.5f} in [0, 1] "
                    f"pixel units, {card.get('epochs_run', card.get('epochs'))} epochs){stopped}; autoattack_acc "
                    "filled by an evaluation.")
    else:
        footnote = "Undefended (standard training); autoattack_acc filled by an evaluation."
    model = recipe.get("model", {})
    width = model.get("width", model.get("vgg_width"))
    arch = {"vgg16": "VGG16-BN", "uatt": "VGG16-BN + UATT attention (Eq. 16-17)" if model.get("backbone") == "vgg16"
            else "UATT recurrent attention", "cnn": "CNN", "mlp": "MLP"}.get(model.get("arch"), model.get("arch"))
    return {
        "name": name, "link": None, "authors": "robust-uatt", "venue": "robust-uatt zoo (this repository)",
        "architecture": f"{arch}, width x{width}" if width is not None else arch,
        "dataset": recipe.get("dataset"), "threat_model": adv.get("norm", "Linf") if adv else "Linf", "eps": eps,
        "additional_data": False, "number_forward_passes": 1, "reported": None, "autoattack_acc": None,
        "corruptions_acc": None, "footnote": footnote,
    }


def export_run(run_dir: str | Path, name: str | None = None, dest: str | Path | None = None,
               data_dir: str | None = None) -> tuple[Path, Path]:
    """Write ``<dest>/<name>.safetensors`` (fp16) and ``<name>.json`` (card) from a finished run.

    The card's accuracies are measured again on the fp16 weights, on the whole test split and on its lossless
    subset, so the shipped numbers describe the shipped file.
    """
    run_dir = Path(run_dir)
    weights, card_path = run_dir / "model.safetensors", run_dir / "model_card.json"
    if not weights.is_file() or not card_path.is_file():
        raise UserError(f"{run_dir}: not a finished run (model.safetensors and model_card.json are needed)")
    tensors, meta = load_tensors(weights)
    recipe = Recipe.from_dict(meta["recipe"], where=str(weights))
    card = read_json(card_path)
    name = name or safe_component(recipe.name)  # a name read from a file: one path component, never ../
    dest = Path(dest) if dest is not None else shipped_dir()
    dest.mkdir(parents=True, exist_ok=True)

    half = to_fp16(tensors)
    model = create_model(recipe)
    load_state_into(model, {k: v.float() if v.is_floating_point() else v for k, v in half.items()}, str(weights))
    model.eval()
    test = load_split(recipe.dataset, "test", data_dir, False, recipe.data)
    accuracy = {"test": accuracy_entry(_count_correct(model, test.x, test.y), len(test))}
    if test.lossless is not None and bool(test.lossless.any()):
        exact = test.subset(test.lossless)
        accuracy["test_lossless"] = accuracy_entry(_count_correct(model, exact.x, exact.y), len(exact))

    info = model_info(card, name)
    info["clean_acc"] = round(100 * accuracy["test"]["accuracy"], 2)
    shipped_card = {**info, "kind": KIND, "zoo_name": recipe.name, "preset": card.get("preset"),
                    "seed": card.get("seed"), "recipe": card.get("recipe"), "params": card.get("params"),
                    "data": card.get("data"), "epochs": card.get("epochs"), "device": card.get("device"),
                    "train_images_per_s": card.get("train_images_per_s"), "command": card.get("command"),
                    "versions": card.get("versions"), "weights_dtype": "float16",
                    "accuracy": accuracy, "accuracy_fp32_run": card.get("accuracy"),
                    **({"adversarial": card["adversarial"]} if card.get("adversarial") else {}),
                    "source_run": run_dir.name}
    out_weights, out_card = dest / f"{name}.safetensors", dest / f"{name}.json"
    write_json(out_card, shipped_card)
    save_tensors(out_weights, half, {"recipe": recipe.to_dict(), "seed": card.get("seed"), "kind": KIND})
    return out_weights, out_card


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m robust_uatt.training.export",
                                description="Ship a finished training run as zoo weights (fp16 + model card).")
    p.add_argument("run_dir")
    p.add_argument("--name", default=None, help="file name in zoo/weights (default: the recipe's zoo name)")
    p.add_argument("--dest", default=None, help="folder (default: zoo/weights)")
    p.add_argument("--data-dir", default=None)
    args = p.parse_args(argv)
    try:
        w, c = export_run(args.run_dir, args.name, args.dest, args.data_dir)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    card = read_json(c)
    acc = card["accuracy"]["test"]
    print(f"{w} ({w.stat().st_size / 2**20:.1f} MiB): test accuracy {acc['accuracy']:.2%} "
          f"[{acc['ci95'][0]:.2%}, {acc['ci95'][1]:.2%}] on n={acc['n']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
