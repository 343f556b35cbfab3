"""Shipped zoo weights: trained models that live in the repository (``zoo/weights/``), so that a fresh clone can
evaluate the zoo without training anything first.

A shipped model is two files named after its zoo recipe:

- ``<name>.safetensors``: fp16 weights (integer buffers stay as they are) with the recipe in the header, like any
  robust-uatt checkpoint, so ``load_model`` rebuilds it from the file alone;
- ``<name>.json``: its model card, with RobustBench's ``ModelInfo`` fields (name, architecture, dataset, eps,
  clean_acc, autoattack_acc, ...) beside ours (recipe, preset, seed, data, commit, versions, training budget) and the
  accuracies *of the fp16 weights themselves*, each with its n and a 95% Clopper-Pearson interval.

``export_run(run_dir)`` makes both from a finished training run (``python -m robust_uatt.models.shipped RUN_DIR``).
Resolution order for a zoo name (``find_weights``): the newest finished local run under ``runs/<name>/``, else the
shipped file; ``weights_origin`` says which, so every command can print it.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

import torch

from robust_uatt.utils.errors import UserError
from robust_uatt.utils.files import load_tensors, read_json, save_tensors, write_json
from robust_uatt.utils.resources import toml_dirs

KIND = "robust-uatt shipped model"


def shipped_dir() -> Path:
    """The folder of shipped weights: ``zoo/weights`` (installed: inside ``robust_uatt.recipes``)."""
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


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Exact (Clopper-Pearson) two-sided interval for a binomial proportion k/n."""
    from scipy.stats import beta

    if n <= 0:
        return (math.nan, math.nan)
    a = (1 - level) / 2
    low = 0.0 if k == 0 else float(beta.ppf(a, k, n - k + 1))
    high = 1.0 if k == n else float(beta.ppf(1 - a, k + 1, n - k))
    return (low, high)


def accuracy_entry(correct: int, n: int) -> dict[str, Any]:
    low, high = clopper_pearson(correct, n)
    return {"accuracy": correct / n if n else math.nan, "correct": correct, "n": n, "ci95": [low, high]}


def to_fp16(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.half() if v.is_floating_point() else v for k, v in state.items()}


def _count_correct(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 500) -> int:
    from robust_uatt.data.datasets import to_float

    correct = 0
    with torch.inference_mode():
        for i in range(0, len(x), batch):
            correct += int((model(to_float(x[i:i + batch])).argmax(1) == y[i:i + batch]).sum())
    return correct


def model_info(card: dict[str, Any], name: str) -> dict[str, Any]:
    """RobustBench's ModelInfo fields for a card (undefended models: eps null, no AutoAttack number yet)."""
    recipe = card.get("recipe", {})
    model = recipe.get("model", {})
    width = model.get("width", model.get("vgg_width"))
    arch = {"vgg16": "VGG16-BN", "uatt": "VGG16-BN + UATT attention (Eq. 16-17)" if model.get("backbone") == "vgg16"
            else "UATT recurrent attention", "cnn": "CNN", "mlp": "MLP"}.get(model.get("arch"), model.get("arch"))
    return {
        "name": name, "link": None, "authors": "robust-uatt", "venue": "robust-uatt zoo (this repository)",
        "architecture": f"{arch}, width x{width}" if width is not None else arch,
        "dataset": recipe.get("dataset"), "threat_model": "Linf", "eps": None,  # trained without adversarial examples
        "additional_data": False, "number_forward_passes": 1, "reported": None, "autoattack_acc": None,
        "corruptions_acc": None, "footnote": "Undefended (standard training); autoattack_acc filled by an evaluation.",
    }


def export_run(run_dir: str | Path, name: str | None = None, dest: str | Path | None = None,
               data_dir: str | None = None) -> tuple[Path, Path]:
    """Write ``<dest>/<name>.safetensors`` (fp16) and ``<name>.json`` (card) from a finished run.

    The card's accuracies are measured again on the fp16 weights, on the whole test split and on its lossless
    subset, so the shipped numbers describe the shipped file.
    """
    from robust_uatt.data.datasets import load_split
    from robust_uatt.models.zoo import Recipe, create_model
    from robust_uatt.utils.files import load_state_into

    run_dir = Path(run_dir)
    weights, card_path = run_dir / "model.safetensors", run_dir / "model_card.json"
    if not weights.is_file() or not card_path.is_file():
        raise UserError(f"{run_dir}: not a finished run (model.safetensors and model_card.json are needed)")
    tensors, meta = load_tensors(weights)
    recipe = Recipe.from_dict(meta["recipe"], where=str(weights))
    card = read_json(card_path)
    name = name or recipe.name
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
                    "source_run": run_dir.name}
    out_weights, out_card = dest / f"{name}.safetensors", dest / f"{name}.json"
    write_json(out_card, shipped_card)
    save_tensors(out_weights, half, {"recipe": recipe.to_dict(), "seed": card.get("seed"), "kind": KIND})
    return out_weights, out_card


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m robust_uatt.models.shipped",
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
