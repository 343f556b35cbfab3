"""The attack-time graph: a frozen eval-mode copy of the model with every Conv+BatchNorm pair folded into one conv.

Why: in eval mode a BatchNorm is a fixed per-channel affine map, so ``bn(conv(x)) == conv'(x)`` with
``w' = w * gamma / sqrt(var + eps)`` and ``b' = (b - mean) * gamma / sqrt(var + eps) + beta``
(``torch.nn.utils.fusion.fuse_conv_bn_eval``). Folding removes one memory-bound pass over every activation in the
forward and in the input-gradient backward of each PGD step (VGG16: 13 of them), at no cost in exactness beyond
float rounding. Other exact simplifications done here: eval-mode dropout becomes ``nn.Identity`` and every
parameter of the copy is frozen (attacks need input gradients only). Not done, because not exact: folding the
input normalization into the first conv (its zero padding lives in normalized space, so border outputs change).

Used only where exact: :func:`attack_graph` compares the folded copy's logits with the original's on one batch
(the first of the run) and falls back to the original model when they differ by more than the tolerance, when the
model cannot be copied, or when there is nothing to fold; :class:`AttackGraph.describe` says which graph ran and why
(results.json, ``attack_graph``). The harness judges every verdict on the original model, never on this copy (an
attack's own early stop reads the copy's logits: a point within ~1e-5 of the decision boundary may be dropped or
kept by the attack a step early or late, which can only change how hard it was attacked, never its verdict).

Which pairs fold: a ``Conv{1,2,3}d`` directly followed, inside an ``nn.Sequential``, by a ``BatchNorm{1,2,3}d`` of
the same dimension that is in eval mode and has running statistics (a BatchNorm in train mode, or one without
running statistics, normalizes with batch statistics and is left as it is). A model that uses a folded conv's output
elsewhere too (its forward calls ``seq[0]`` by hand) is not exact after folding; the logit check catches it.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

FOLDABLE = ((nn.Conv1d, nn.BatchNorm1d), (nn.Conv2d, nn.BatchNorm2d), (nn.Conv3d, nn.BatchNorm3d))
DROPOUTS = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)
RTOL = 1e-4  # relative to the largest |logit| of the batch: float32 rounding of 13 folded layers is ~1e-6
ATOL = 1e-5


@dataclass
class AttackGraph:
    """The module attacks run on, and the record of how it was chosen.

    module: the folded copy (``kind == "folded"``) or the original model (``kind == "original"``).
    folded: Conv+BatchNorm pairs folded (also when the copy was rejected); skipped: BatchNorms next to a conv that
    could not be folded (train mode, no running statistics); dropouts: dropout layers replaced by identities.
    max_abs_diff / tolerance: the logit check on the first batch (None when no check ran); reason: why the original
    runs (empty for the folded graph).
    """

    module: nn.Module
    kind: str
    folded: int = 0
    skipped: int = 0
    dropouts: int = 0
    checked_on: int = 0
    max_abs_diff: float | None = None
    tolerance: float | None = None
    reason: str = ""

    def describe(self) -> dict[str, Any]:
        return {"graph": self.kind, "folded_conv_bn": self.folded, "unfoldable_bn": self.skipped,
                "dropouts_removed": self.dropouts, "checked_on": self.checked_on, "max_abs_diff": self.max_abs_diff,
                "tolerance": self.tolerance, "reason": self.reason}


def _foldable(conv: nn.Module, bn: nn.Module) -> bool:
    """Whether ``bn`` after ``conv`` is a fixed affine map of matching dimension (eval mode, running statistics)."""
    pair = next((p for p in FOLDABLE if type(conv) is p[0]), None)  # exact types: a subclass may change forward
    return (pair is not None and type(bn) is pair[1] and not conv.training and not bn.training
            and bn.running_mean is not None and bn.running_var is not None and conv.out_channels == bn.num_features)


def _conv_bn_pairs(model: nn.Module) -> Iterator[tuple[nn.Sequential, str, str, bool]]:
    """(Sequential, conv's name, BatchNorm's name, foldable) for every conv directly followed by a BatchNorm."""
    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        names = list(seq._modules)
        for a, b in zip(names, names[1:]):
            conv, bn = seq._modules[a], seq._modules[b]
            if isinstance(conv, nn.modules.conv._ConvNd) and isinstance(bn, nn.modules.batchnorm._BatchNorm):
                yield seq, a, b, _foldable(conv, bn)


def fold_batchnorm(model: nn.Module) -> tuple[nn.Module, int, int, int]:
    """A frozen deep copy of ``model`` with its eval-mode Conv+BatchNorm pairs folded and eval-mode dropout removed.

    Returns (copy, pairs folded, BatchNorms after a conv left unfolded, dropouts removed). The original is untouched.
    Folded BatchNorms become ``nn.Identity`` in place, so module indices (``features[3]``) keep their meaning.
    """
    graph = copy.deepcopy(model)  # modes kept as they are: the copy must compute what the original computes
    folded = skipped = dropouts = 0
    for seq, a, b, foldable in list(_conv_bn_pairs(graph)):
        if foldable:
            seq._modules[a] = fuse_conv_bn_eval(seq._modules[a], seq._modules[b])
            seq._modules[b] = nn.Identity()
        folded, skipped = folded + foldable, skipped + (not foldable)
    for parent in list(graph.modules()):
        for name, child in list(parent._modules.items()):
            if type(child) in DROPOUTS and not child.training:
                parent._modules[name] = nn.Identity()
                dropouts += 1
    graph.requires_grad_(False)
    return graph, folded, skipped, dropouts


def _logits(model: nn.Module, x: Tensor, seed: int) -> Tensor:
    """Logits under a fixed seed, so a stochastic model (sampled glimpse locations) draws the same numbers twice;
    the caller's random state is left as it was."""
    devices = [x.device] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.inference_mode():
        torch.manual_seed(seed)
        if devices:
            torch.cuda.manual_seed_all(seed)
        return model(x).float()


def attack_graph(model: nn.Module, x: Tensor, *, rtol: float = RTOL, atol: float = ATOL) -> AttackGraph:
    """The graph attacks should run on: the folded copy when its logits on ``x`` (the first batch) match the
    original's within ``atol + rtol * max|logits|``, else the original model, with the reason recorded.

    model: in eval mode (the harness sets it); x: (B, ...) inputs in the model's input space, on its device.
    """
    if len(x) == 0:
        return AttackGraph(model, "original", reason="no inputs to check a folded graph on")
    pairs = [foldable for *_, foldable in _conv_bn_pairs(model)]
    if not any(pairs):  # decided on the original: a large model with nothing to fold is never copied
        return AttackGraph(model, "original", skipped=len(pairs),
                           reason="no Conv+BatchNorm pair to fold" + (" in eval mode" if pairs else ""))
    try:
        graph, folded, skipped, dropouts = fold_batchnorm(model)
    except Exception as e:  # a model deepcopy cannot handle (open handles, custom __deepcopy__): attack the original
        return AttackGraph(model, "original", reason=f"cannot copy the model ({e.__class__.__name__}: {e})")
    reference = _logits(model, x, seed=0)
    candidate = _logits(graph, x, seed=0)
    tolerance = atol + rtol * float(reference.abs().max()) if reference.numel() else atol
    if candidate.shape != reference.shape:
        diff = float("inf")
    else:
        diff = float((candidate - reference).abs().max()) if reference.numel() else 0.0
    record = dict(folded=folded, skipped=skipped, dropouts=dropouts, checked_on=len(x), max_abs_diff=diff,
                  tolerance=tolerance)
    if not diff <= tolerance:  # also catches NaN
        return AttackGraph(model, "original", **record,
                           reason=f"folded logits differ from the original's by {diff:.3g} > {tolerance:.3g}")
    return AttackGraph(graph, "folded", **record)
