"""Clean predictions in batches, with no autograd (inference_mode) and the model in eval mode."""

from __future__ import annotations

import torch
from torch import nn

from robust_uatt.data.datasets import to_float
from robust_uatt.evaluation.judging import judge_correct
from robust_uatt.models.outputs import decide, hits


@torch.inference_mode()
def predict_labels(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Predicted labels (B,) -- or decoded sequences (B, S) -- of one float batch in [0, 1], as the model is (its mode
    untouched), without autograd."""
    return decide(model(x))


@torch.inference_mode()
def predict(model: nn.Module, x_uint8: torch.Tensor, batch_size: int, device: torch.device) -> torch.Tensor:
    """Predicted labels (N,) for uint8 images; the model's train/eval mode is restored afterwards."""
    was_training = model.training
    model.eval()
    out = []
    try:
        for i in range(0, len(x_uint8), batch_size):
            xb = to_float(x_uint8[i:i + batch_size].to(device, non_blocking=True))
            out.append(predict_labels(model, xb).cpu())
    finally:
        model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


@torch.inference_mode()
def correct(model: nn.Module, x_uint8: torch.Tensor, y: torch.Tensor, batch_size: int, device: torch.device,
            draws: int = 1) -> torch.Tensor:
    """Per image (N,) bool: classified correctly in a strict majority of ``draws`` passes, in exact float32 (the
    harness's clean judgement; see ``robust_uatt.evaluation.judging``). The model's train/eval mode is restored
    afterwards."""
    was_training = model.training
    model.eval()
    out = []
    try:
        for i in range(0, len(x_uint8), batch_size):
            xb = to_float(x_uint8[i:i + batch_size].to(device, non_blocking=True))
            out.append(judge_correct(model, xb, y[i:i + batch_size].to(device), draws).cpu())
    finally:
        model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.bool)


def accuracy(model: nn.Module, x_uint8: torch.Tensor, y: torch.Tensor, batch_size: int,
             device: torch.device) -> float:
    if len(y) == 0:
        return float("nan")
    return float(hits(predict(model, x_uint8, batch_size, device), y).float().mean())  # whole sequences
