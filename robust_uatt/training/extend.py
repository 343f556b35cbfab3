"""Extend a run that early stopping ended: the same run under a larger patience, without retraining its epochs.

Why it is exact: patience decides only *when* a run stops, never what an epoch does, and under a constant
learning-rate schedule neither does ``epochs``, the maximum (the cosine and one-cycle schedules depend on it, so
there it must stay). A run stopped by patience P at epoch E therefore holds, in its last checkpoint, exactly the
state that a run of the same recipe and seed with patience P' > P (or none) reaches after epoch E, and resuming it
under P' trains the epochs that run would train next, bit for bit on the CPU (``tests/test_extend.py`` compares
both runs). Paper tables use it to move a finished budget (Table 1 at patience 10, at most 100 epochs) to a longer
one (patience 30, at most 200) at the cost of the new epochs only.

``prepare_extension(read_source(src), dst, recipe)`` copies what a resume needs (checkpoint, best-validation weights, metrics,
configuration) into a new run directory, with the recipe's patience, and records where it came from
(``extended_from`` in config.json and in the finished model card); ``robust-uatt train --extend SRC --preset P``
then resumes it. The source run is never modified. Refused, with one line and nothing written: a source that is not
a finished run, has nothing left to train (it ran all its epochs, or the adversarial guard stopped it), a recipe
that differs from the source's in anything but ``[train] patience`` and (constant schedule) ``epochs`` (and its
preset's name), a patience that could have stopped the source earlier or where it stopped, an occupied destination.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from robust_uatt.models.zoo import Recipe
from robust_uatt.training.card import read_metrics
from robust_uatt.training.checkpoint import CHECKPOINT, CONFIG, METRICS, WEIGHTS
from robust_uatt.training.selection import BEST_VAL
from robust_uatt.utils.errors import UserError
from robust_uatt.utils.files import RunLock, atomic_write_text, load_tensors, read_json, save_tensors, write_json
from robust_uatt.utils.runtime import versions

CHANGEABLE = ("patience", "epochs")  # the [train] keys an extension may change (epochs: under a constant schedule)


def recipe_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """The recipe keys (``table.key``) in which ``new`` differs from ``old``, beyond the changeable ones and the
    preset's name."""
    skip = {"preset"}
    diffs = []
    for table in sorted((set(old) | set(new)) - skip):
        a, b = old.get(table), new.get(table)
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += [f"{table}.{k}" for k in sorted(set(a) | set(b))
                      if a.get(k) != b.get(k) and not (table == "train" and k in CHANGEABLE)]
        elif a != b:
            diffs.append(table)
    return diffs


def check_extension(src: Path, old: Recipe, new: Recipe, records: list[dict[str, Any]]) -> None:
    """Every reason ``new`` cannot continue the finished run ``src`` (recipe ``old``, epoch ``records``) as the run
    ``new`` gives from scratch."""
    diffs = recipe_differences(old.to_dict(), new.to_dict())
    if diffs:
        raise UserError(f"an extension may change only [train] {' and '.join(CHANGEABLE)}; the recipe differs from "
                        f"{src}'s in {', '.join(diffs)} (start a new run to train differently)")
    o, n = old.train, new.train
    if n["epochs"] != o["epochs"]:
        if o["schedule"] != "constant":
            raise UserError(f"under the {o['schedule']} schedule every step's learning rate depends on epochs: an "
                            f"extension keeps epochs ({o['epochs']}) unless the schedule is constant")
        if n["epochs"] < o["epochs"]:
            raise UserError(f"epochs {n['epochs']} is fewer than {src}'s {o['epochs']}: nothing to extend")
    if n["patience"] and not (o["patience"] and n["patience"] >= o["patience"]):
        raise UserError(f"patience {n['patience']} could have stopped {src} earlier than its own patience "
                        f"({o['patience'] or 'none'}) did: give a larger one, or 0 (never stop early)")
    last = records[-1] if records else {}
    if last.get("guard") == "collapse":
        raise UserError(f"{src}: the adversarial guard stopped it at epoch {last.get('epoch')} (a collapse), not "
                        f"early stopping: nothing to extend")
    if last.get("early_stop"):
        if n["patience"] == o["patience"]:
            raise UserError(f"patience {n['patience']} would have stopped {src} where it stopped (epoch "
                            f"{last.get('epoch')}): give a larger one, or 0 (never stop early)")
    elif len(records) >= n["epochs"]:
        raise UserError(f"{src} did not stop early (it ran all {len(records)} of its epochs): nothing to extend "
                        f"(under a constant schedule, more epochs can be given)")


@dataclass
class SourceRun:
    """A finished run read once: its directory, config.json, recipe and epoch records."""

    path: Path
    config: dict[str, Any]
    recipe: Recipe
    records: list[dict[str, Any]]


def read_source(src: Path) -> SourceRun:
    """The finished run ``src``, or a one-line UserError saying why it is not one."""
    src = Path(src)
    if not src.is_dir():
        raise UserError(f"{src}: no such run directory")
    RunLock(src).check_free()
    for needed in (CONFIG, METRICS, CHECKPOINT, WEIGHTS):
        if not (src / needed).is_file():
            what = "not a finished run" if needed == WEIGHTS else f"no {needed}"
            raise UserError(f"{src}: {what}; only a finished run that stopped early can be extended")
    config = read_json(src / CONFIG)
    if not (isinstance(config, dict) and isinstance(config.get("recipe"), dict)):
        raise UserError(f"{src / CONFIG}: not a robust-uatt run configuration")
    return SourceRun(src, config, Recipe.from_dict(config["recipe"], where=str(src / CONFIG)),
                     read_metrics(src / METRICS))


def prepare_extension(source: SourceRun, dst: Path, recipe: Recipe) -> dict[str, Any]:
    """Make ``dst`` a resumable run that continues the finished run ``source`` under ``recipe`` (its patience);
    returns the ``extended_from`` record. ``dst`` appears whole or not at all."""
    src, old, records, dst = source.path, source.recipe, source.records, Path(dst)
    check_extension(src, old, recipe, records)
    tensors, meta = load_tensors(src / CHECKPOINT)
    if meta.get("epoch") != len(records) or meta.get("step_in_epoch") != 0 or meta.get("metrics_lines") != len(records):
        raise UserError(f"{src / CHECKPOINT}: holds epoch {meta.get('epoch')} (step {meta.get('step_in_epoch')}), "
                        f"metrics.jsonl {len(records)} epochs; the run directory is damaged")
    if dst.exists() and not (dst.is_dir() and not any(dst.iterdir())):
        raise UserError(f"{dst} already exists and is not empty: name a new --out for the extension")
    origin = {"run": str(src), "recipe_preset": old.preset, "patience": old.train["patience"],
              "epochs_run": len(records), "best_epoch": max(records, key=lambda r: (r["val_acc"], -r["epoch"]))["epoch"],
              "extended_with": {"patience": recipe.train["patience"], "preset": recipe.preset},
              "argv": sys.argv, "versions": versions()}
    staging = dst.parent / f".{dst.name}.extending-{os.getpid()}"
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        save_tensors(staging / CHECKPOINT, tensors, {**meta, "recipe": recipe.to_dict()})
        if (src / BEST_VAL).is_file():
            shutil.copyfile(src / BEST_VAL, staging / BEST_VAL)
        # the records as the longer run writes them: the source's last one did not stop it there
        lines = [json.dumps({k: v for k, v in r.items() if k != "early_stop"}, default=str) for r in records]
        atomic_write_text(staging / METRICS, "".join(line + "\n" for line in lines))
        write_json(staging / CONFIG, {**source.config, "recipe": recipe.to_dict(), "extended_from": origin})
        if dst.exists():
            dst.rmdir()
        os.replace(staging, dst)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return origin


__all__ = ["SourceRun", "read_source", "prepare_extension", "check_extension", "recipe_differences", "CHANGEABLE"]
