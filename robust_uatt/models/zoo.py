"""The model zoo: TOML recipes (zoo/<name>.toml) and one registry mapping architecture names to builders.

In the spirit of timm's ``create_model``: ``create_model(recipe)`` looks the architecture up in the registry
(``models.registry.MODELS``, filled by ``@register_model``)
and calls its builder with the recipe's ``[model]`` table. Recipe keys are validated against fixed schemas (and the
builder's signature), so a typo is reported with its file and key instead of being silently ignored.
"""

from __future__ import annotations

import copy
import inspect
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from robust_uatt.data.config import DataConfig
from robust_uatt.data.datasets import DATASETS, SEQUENCE_DATASETS, dataset_shape, sequence_length
from robust_uatt.models.registry import MODELS, builder_params, predicts_sequences
from robust_uatt.training.config import TrainConfig, adv_table
from robust_uatt.utils import toml
from robust_uatt.utils.config import from_table, schema
from robust_uatt.utils.errors import UserError, unknown_name
from robust_uatt.utils.resources import find_toml, toml_names

# ---------------------------------------------------------------------------------------------------------------
# Recipes

TRAIN_SCHEMA = schema(TrainConfig)  # {key: (types, default)}, from the dataclass fields
DATA_SCHEMA = schema(DataConfig)
TOP_KEYS = {"description", "dataset", "paper", "model", "data", "train", "adv", "presets", "base"}


@dataclass
class Recipe:
    """A validated recipe, with a preset (if any) already merged in."""

    name: str
    description: str
    dataset: str
    model: dict[str, Any]
    data: dict[str, Any]
    train: dict[str, Any]
    paper: str = ""
    preset: str | None = None
    presets: list[str] = field(default_factory=list)
    source: str = ""
    adv: dict[str, Any] = field(default_factory=dict)  # [adv]: adversarial training; empty = clean training

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "dataset": self.dataset, "paper": self.paper,
                "preset": self.preset, "model": self.model, "data": self.data, "train": self.train,
                **({"adv": self.adv} if self.adv else {})}

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "recipe") -> "Recipe":
        """Rebuild from ``to_dict`` output (checkpoint metadata, config.json), validating it again."""
        if not isinstance(d, dict):
            raise UserError(f"{where}: the recipe must be a table, got {type(d).__name__}")
        raw = {k: d.get(k) for k in ("description", "dataset", "paper", "model", "data", "train", "adv") if d.get(k)}
        recipe = _validate(raw, str(d.get("name", "?")), where)
        preset = d.get("preset")
        recipe.preset = preset if isinstance(preset, str) else None
        return recipe


def recipe_names() -> list[str]:
    return toml_names("robust_uatt.recipes", "zoo")


def _recipe_path(name: str) -> Path:
    return find_toml(name, "robust_uatt.recipes", "zoo", "model")


def _deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def _check_model(table: Any, where: str) -> dict[str, Any]:
    if not isinstance(table, dict) or "arch" not in table:
        raise UserError(f"{where}: [model] needs an 'arch' ({', '.join(sorted(MODELS))})")
    arch = table["arch"]
    if not isinstance(arch, str) or arch not in MODELS:
        raise unknown_name(f"architecture in {where}:", str(arch), MODELS)
    params = builder_params(arch)
    for key, value in table.items():
        if key == "arch":
            continue
        if key not in params:
            raise unknown_name(f"key in [model] of {where} (arch {arch}):", key, params)
        default = params[key].default
        if default is not inspect.Parameter.empty and default is not None and not _same_kind(value, default):
            raise UserError(f"{where}: [model] {key} must be {type(default).__name__}, got {type(value).__name__}")
        if isinstance(value, float) and not math.isfinite(value):
            raise UserError(f"{where}: [model] {key} must be a finite number, got {value}")
    return dict(table)


def _same_kind(value: Any, default: Any) -> bool:
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(default, bool)
    if isinstance(default, (int, float)):
        return isinstance(value, (int, float))
    if isinstance(default, (tuple, list)):
        return isinstance(value, (tuple, list))
    return isinstance(value, type(default))


def _check_labels(arch: str, dataset: str, where: str) -> None:
    """A sequence model needs a sequence dataset and a classifier a class dataset: say so at recipe load."""
    seq_data, seq_model = dataset in SEQUENCE_DATASETS, predicts_sequences(arch)
    if seq_data and not seq_model:
        raise UserError(f"{where}: {dataset} has digit-sequence labels; arch '{arch}' predicts one class (use "
                        f"{' or '.join(a for a in sorted(MODELS) if predicts_sequences(a))})")
    if seq_model and not seq_data:
        raise UserError(f"{where}: arch '{arch}' predicts digit sequences; {dataset} has one class per image (use "
                        f"{' or '.join(SEQUENCE_DATASETS)})")


def check_train_table(table: Any, where: str) -> dict[str, Any]:
    """A [train] table validated (keys, types, ranges, the rules between keys), every key filled in."""
    train = asdict(from_table(TrainConfig, table, where, "train"))
    for key in ("epochs", "batch_size", "eval_batch_size"):
        if train[key] <= 0:
            raise UserError(f"{where}: [train] {key} must be > 0, got {train[key]}")
    if train["lr"] <= 0:
        raise UserError(f"{where}: [train] lr must be > 0, got {train['lr']}")
    if train["patience"] and train["select"] != "best-val":
        raise UserError(f"{where}: [train] patience needs select = \"best-val\" (early stopping keeps the best "
                        "validation epoch)")
    return train


def _validate(raw: dict[str, Any], name: str, where: str) -> Recipe:
    for key in raw:
        if key not in TOP_KEYS:
            raise unknown_name(f"top-level key in {where}:", key, TOP_KEYS)
    dataset = raw.get("dataset")
    if not isinstance(dataset, str) or dataset not in DATASETS:
        raise unknown_name(f"dataset in {where}:", str(dataset), DATASETS)
    train = check_train_table(raw.get("train", {}), where)
    data = asdict(from_table(DataConfig, raw.get("data", {}), where, "data"))
    model = _check_model(raw.get("model"), where)
    _check_labels(model["arch"], dataset, where)
    if data["min_digits"] > data["max_digits"]:
        raise UserError(f"{where}: [data] min_digits {data['min_digits']} exceeds max_digits {data['max_digits']}")
    adv = adv_table(raw["adv"], where) if "adv" in raw else {}
    return Recipe(name=name, description=str(raw.get("description", "")), dataset=dataset,
                  model=model, data=data, train=train,
                  paper=str(raw.get("paper", "")), source=where, adv=adv)


def load_recipe(name: str, preset: str | None = None) -> Recipe:
    """Read, merge the preset into, and validate a recipe by zoo name (or a path to a .toml file)."""
    path = _recipe_path(name)
    raw = _read_toml(path)
    if "base" in raw:
        raw = _on_base(raw, path)
    presets = raw.pop("presets", {}) if isinstance(raw.get("presets", {}), dict) else None
    if presets is None or not all(isinstance(v, dict) for v in presets.values()):
        raise UserError(f"{path}: [presets] must be a table of tables")
    if preset is not None:
        if preset not in presets:
            raise unknown_name(f"preset of {path.stem}", preset, presets)
        raw = _deep_merge(raw, presets[preset])
    recipe = _validate(raw, path.stem, str(path))
    recipe.preset, recipe.presets = preset, sorted(presets)
    for other in presets:  # a typo in any preset is reported now, not when someone finally uses that preset
        if other != preset:
            _validate(_deep_merge(raw, presets[other]), path.stem, f"{path} [presets.{other}]")
    return recipe


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return toml.loads(path.read_text(encoding="utf-8"))
    except (toml.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: invalid TOML ({e})") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read recipe ({e.strerror or e})") from None


def _on_base(raw: dict[str, Any], path: Path) -> dict[str, Any]:
    """``base = "other"``: the other zoo recipe's tables (not its presets) with this file's keys merged on top, so a
    variant (``cifar10-vgg-at``) shares its model definition with the recipe it extends. One level only."""
    base = raw.pop("base")
    if not isinstance(base, str):
        raise UserError(f"{path}: 'base' must name a zoo recipe, got {type(base).__name__}")
    base_path = _recipe_path(base)
    inherited = _read_toml(base_path)
    if "base" in inherited:
        raise UserError(f"{path}: its base {base_path.stem} has a base of its own (one level only)")
    inherited.pop("presets", None)
    return _deep_merge(inherited, raw)


def create_model(recipe: Recipe) -> nn.Module:
    """Build the (untrained) model a recipe describes."""
    info = DATASETS[recipe.dataset]
    kwargs = {k: v for k, v in recipe.model.items() if k != "arch"}
    params = builder_params(recipe.model["arch"])
    kwargs = {k: tuple(v) if isinstance(v, list) and isinstance(params[k].default, tuple) else v
              for k, v in kwargs.items()}
    c, h, _ = dataset_shape(recipe.dataset, recipe.data)
    length = sequence_length(recipe.dataset, recipe.data)
    if length is not None:
        kwargs["positions"] = length
    try:
        return MODELS[recipe.model["arch"]](num_classes=info.num_classes, in_channels=c, image_size=h,
                                                  mean=info.mean, std=info.std, **kwargs)
    except (ValueError, RuntimeError, TypeError) as e:  # a [model] value the builder rejects (sizes, counts)
        first = str(e).splitlines()[0] if str(e) else e.__class__.__name__
        raise UserError(f"{recipe.source or recipe.name}: [model] cannot build {recipe.model['arch']}: {first}") \
            from e


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------------------------------------------------------
# Trained models: a zoo name (latest finished run), a run directory, or a safetensors checkpoint


def find_weights(spec: str, runs_dir: str | Path = "runs") -> Path:
    """Resolve ``--model`` to a weights file. A zoo name means its newest finished run under ``runs_dir``, else
    the weights shipped in ``zoo/weights/`` (``models.shipped.weights_origin`` tells which)."""
    path = Path(spec)
    if path.is_file():
        return path
    if path.is_dir():
        if (path / "model.safetensors").is_file():
            return path / "model.safetensors"
        if (path / "checkpoint.safetensors").is_file():
            raise UserError(f"{path}: training has not finished (only a checkpoint); resume it with "
                            f"`robust-uatt train --resume {path}`, or pass {path / 'checkpoint.safetensors'}")
        raise UserError(f"{path}: no model.safetensors in this directory")
    if spec.endswith((".safetensors", ".pt", ".pth")) or "/" in spec:
        raise UserError(f"{spec}: no such file or directory")
    if spec not in recipe_names():
        raise unknown_name("model", spec, recipe_names())
    runs = sorted((Path(runs_dir) / spec).glob("*/model.safetensors"), key=lambda p: p.stat().st_mtime)
    if runs:
        return runs[-1]
    from robust_uatt.models.shipped import shipped_weights

    shipped = shipped_weights(spec)
    if shipped is None:
        raise UserError(f"no trained weights for '{spec}' under {Path(runs_dir) / spec}/ and none shipped: train it "
                        f"first with `robust-uatt train {spec}`, or pass a run directory or checkpoint with --model")
    return shipped


def load_trained(spec: str, runs_dir: str | Path = "runs") -> tuple[nn.Module, Recipe, Path]:
    """Model (eval mode, on CPU), its recipe and the weights file, from a zoo name, run directory or checkpoint."""
    from robust_uatt.utils.files import check_state_fits, load_state_into, load_tensors

    weights = find_weights(spec, runs_dir)
    if weights.suffix != ".safetensors":
        raise UserError(f"{weights}: robust-uatt checkpoints are .safetensors files (with the recipe inside)")
    tensors, meta = load_tensors(weights)
    if "recipe" not in meta:
        raise UserError(f"{weights}: no recipe in the checkpoint metadata (not written by robust-uatt?)")
    recipe = Recipe.from_dict(meta["recipe"], where=str(weights))
    state = {k[6:] if k.startswith("model.") else k: v for k, v in tensors.items()
             if not k.startswith(("optim.", "rng."))}
    import torch

    with torch.device("meta"):  # shapes first, on no memory: a small file cannot make us build a huge model
        skeleton = create_model(recipe)
    check_state_fits(skeleton, state, str(weights))
    model = create_model(recipe)
    load_state_into(model, state, str(weights))
    return model.eval(), recipe, weights
