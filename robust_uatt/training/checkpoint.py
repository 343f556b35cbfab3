"""Checkpoints that resume bit-identically: weights, optimizer state and both RNG states in one safetensors file.

``checkpoint.safetensors`` tensors: ``model.<name>`` (state dict), ``optim.<param index>.<key>`` (optimizer tensors),
``rng.cpu`` / ``rng.data`` / ``rng.cuda``; metadata: ``optim_scalars``, ``param_groups``, ``epoch`` (epochs done),
``step_in_epoch`` (steps done in the next one), ``metrics_lines``, ``seed``, ``recipe``, ``partial`` (running sums of
an epoch interrupted mid-way). Written atomically: a kill leaves the previous checkpoint whole.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robust_uatt.utils.errors import UserError
from robust_uatt.utils.files import atomic_write_text, load_state_into, load_tensors, save_tensors

CHECKPOINT = "checkpoint.safetensors"
WEIGHTS = "model.safetensors"
CARD = "model_card.json"
CONFIG = "config.json"
METRICS = "metrics.jsonl"


class TrainingDiverged(RuntimeError):
    """A non-finite loss or weights: the run stops, the last good checkpoint stays."""


@dataclass
class TrainState:
    """What a checkpoint holds, and where the loop stands: the next step is ``step_in_epoch`` of epoch ``epoch``."""

    model: nn.Module
    opt: torch.optim.Optimizer
    gen: torch.Generator  # the data generator: epoch order and augmentation
    epoch: int = 0
    step_in_epoch: int = 0
    metrics_lines: int = 0  # lines of metrics.jsonl this state accounts for
    partial: dict[str, Any] = field(default_factory=dict)  # running sums of an epoch interrupted mid-way
    data_rng: torch.Tensor | None = None  # the data generator's state inside an interrupted epoch


def save_checkpoint(path: Path, state: TrainState, *, seed: int, recipe: dict[str, Any], steps_per_epoch: int,
                    extra: dict[str, torch.Tensor] | None = None) -> None:
    """Write ``state`` to ``path``; never replaces the last good checkpoint with non-finite weights. ``extra``:
    further tensors (every DDP rank's RNG states, ``rng.cpu.rank<r>``)."""
    if not _all_finite(state.model):
        epoch, step = state.epoch, state.step_in_epoch
        raise TrainingDiverged(
            f"non-finite weights after step {epoch * steps_per_epoch + step - 1} (epoch "
            f"{epoch + (1 if step else 0)}); the last good checkpoint is "
            f"{path if path.exists() else 'none (nothing was checkpointed yet)'}")
    tensors, meta = _pack(state.model, state.opt, state.gen)
    tensors.update(extra or {})
    meta.update(epoch=state.epoch, step_in_epoch=state.step_in_epoch, metrics_lines=state.metrics_lines, seed=seed,
                recipe=recipe, partial=state.partial)
    save_tensors(path, tensors, meta)


def load_checkpoint(path: Path, state: TrainState) -> dict[str, torch.Tensor]:
    """Restore ``state`` from ``path`` and return the file's tensors; one that does not fit this run (or was
    tampered with) is a UserError."""
    tensors, meta = load_tensors(path)
    where = str(path)
    load_state_into(state.model, {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, where)
    try:
        _unpack_state(tensors, meta, state.opt, state.gen)
        for key in ("epoch", "step_in_epoch", "metrics_lines"):
            if not isinstance(meta.get(key), int) or meta[key] < 0:
                raise ValueError(f"bad or missing '{key}'")
        if not isinstance(meta.get("partial", {}), dict):
            raise ValueError("bad 'partial'")
    except (KeyError, ValueError, TypeError, RuntimeError, IndexError, AttributeError) as e:
        raise UserError(f"{where}: not a resumable checkpoint of this run ({e.__class__.__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else ''})") from None
    state.data_rng = state.gen.get_state()
    state.partial = meta.get("partial", {})
    state.epoch, state.step_in_epoch, state.metrics_lines = meta["epoch"], meta["step_in_epoch"], meta["metrics_lines"]
    return tensors


def truncate_lines(path: Path, keep: int) -> None:
    """Keep the first ``keep`` lines (those the checkpoint accounts for), atomically."""
    if path.exists():
        try:
            lines = path.read_text(encoding="utf-8").splitlines(keepends=True)[:keep]
        except UnicodeDecodeError:
            raise UserError(f"{path}: damaged (not UTF-8 text); the run directory cannot be resumed") from None
        atomic_write_text(path, "".join(lines))


def _pack(model: nn.Module, opt: torch.optim.Optimizer, gen: torch.Generator) -> tuple[dict, dict]:
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, state in opt.state_dict()["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"optim.{idx}.{key}"] = value
            else:
                scalars.setdefault(str(idx), {})[key] = value
    tensors["rng.cpu"] = torch.get_rng_state()
    tensors["rng.data"] = gen.get_state()
    if torch.cuda.is_available():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    return tensors, {"optim_scalars": scalars, "param_groups": opt.state_dict()["param_groups"]}


def _unpack_state(tensors: dict, meta: dict, opt: torch.optim.Optimizer, gen: torch.Generator) -> None:
    state: dict[int, dict[str, Any]] = {}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, idx, key = k.split(".", 2)
            state.setdefault(int(idx), {})[key] = v
    for idx, values in meta.get("optim_scalars", {}).items():
        state.setdefault(int(idx), {}).update(values)
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    _match_parameter_layout(opt)
    torch.set_rng_state(tensors["rng.cpu"])
    gen.set_state(tensors["rng.data"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])


def _match_parameter_layout(opt: torch.optim.Optimizer) -> None:
    """Give every per-parameter state tensor (moments, momentum) its parameter's memory layout again: a checkpoint
    hands them back contiguous, while VGG's conv weights are channels_last, and torch's fused optimizers pair
    elements in memory order whatever the strides, so a mismatch would silently update the wrong elements."""
    for group in opt.param_groups:
        for p in group["params"]:
            state = opt.state.get(p, {})
            for key, value in state.items():
                if torch.is_tensor(value) and value.shape == p.shape and value.stride() != p.stride():
                    state[key] = torch.empty_like(p, dtype=value.dtype).copy_(value)


def _all_finite(model: nn.Module) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in model.state_dict().values() if t.is_floating_point())
