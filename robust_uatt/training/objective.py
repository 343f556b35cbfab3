"""The loss a model trains on: its own ``objective(x, y)`` where it has one (the attention model: Eq. 14 + the
top-down Q loss), else cross-entropy on its logits. Clean and adversarial training both call it."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from robust_uatt.models.outputs import correct


def model_loss(model: nn.Module, x: Tensor, y: Tensor, label_smoothing: float = 0.0
               ) -> tuple[Tensor, dict[str, Tensor], Tensor]:
    """(batch-mean loss with graph, detached loss terms by name, logits (B, K)) for images x (B, C, H, W) in [0, 1]."""
    if hasattr(model, "objective"):
        return model.objective(x, y)
    logits = model(x)
    return F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing), {}, logits


def count_correct(logits: Tensor, y: Tensor) -> float:
    """How many of the batch the logits get right (whole sequences for a sequence model: ``models.outputs``)."""
    return float(correct(logits.detach(), y).sum())
