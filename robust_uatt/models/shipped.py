"""Shipped zoo weights: trained models that live in the repository (``zoo/weights/``), so that a fresh clone can
evaluate the zoo without training anything first.

A shipped model is two files named after its zoo recipe:

- ``<name>.safetensors``: fp16 weights (integer buffers stay as they are) with the recipe in the header, like any
  robust-uatt checkpoint, so ``load_model`` rebuilds it from the file alone;
- ``<name>.json``: its model card, with RobustBench's ``ModelInfo`` fields (name, architecture, dataset, eps,
  clean_acc, autoattack_acc, ...) beside ours (recipe, preset, seed, data, commit, versions, training budget) and the
  accuracies *of the fp16 weights themselves*, each with its n and a 95% Clopper-Pearson interval.

``training.export.export_run(run_dir)`` makes both from a finished training run
(``python -m robust_uatt.training.export RUN_DIR``).
Resolution order for a zoo name (``find_weights``): the newest finished local run under ``runs/<name>/``, else the
shipped file; ``weights_origin`` says which, so every command can print it.
"""

from __future__ import annotations

import os
from pathlib import Path

from robust_uatt.utils.resources import toml_dirs

KIND = "robust-uatt shipped model"


def shipped_dir() -> Path:
    """The folder of shipped weights: ``zoo/weights`` (installed: inside ``robust_uatt.recipes``), or the folder
    that ``$ROBUST_UATT_SHIPPED`` names (weights kept elsewhere; the tests point it at an empty folder)."""
    override = os.environ.get("ROBUST_UATT_SHIPPED")
    if override:
        return Path(override)
    dirs = toml_dirs("robust_uatt.recipes", "zoo")
    return (dirs[0] if dirs else Path(__file__).resolve().parents[2] / "zoo") / "weights"


def shipped_weights(name: str) -> Path | None:
    """The shipped weights file of zoo model ``name``, or None."""
    path = shipped_dir() / f"{name}.safetensors"
    return path if path.is_file() else None


def shipped_names() -> list[str]:
    folder = shipped_dir()
    return sorted(p.stem for p in folder.glob("*.safetensors")) if folder.is_dir() else []


def weights_origin(path: str | Path) -> str:
    """'shipped' for a file in zoo/weights, else 'local run' (a run directory) or 'file'."""
    path = Path(path).resolve()
    if path.parent == shipped_dir().resolve():
        return "shipped"
    return "local run" if path.name == "model.safetensors" else "file"
