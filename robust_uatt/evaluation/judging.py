"""How the harness decides that a point is classified correctly: deterministically, and by majority for randomized
models.

Two things can make a judgement disagree with the attack that produced the input. (1) Numerics: on CUDA, TF32
matmuls and convolutions round logits to ~1e-3 relative, and a differently-batched pass picks other kernels, so a
point an attack left barely past the decision boundary can flip back. Every judgement therefore runs under
``exact_float32()`` (TF32 off, cuDNN deterministic, restored afterwards) on the batch the attack saw. (2) Randomness:
a model that samples (``--policy sample``) answers differently on every pass, so one pass says little. A point is
judged correct when a strict majority of ``draws`` passes predict its label (ties count as wrong, which can only
lower robust accuracy); the number of draws is recorded in results.json as ``judge_draws``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

from robust_uatt.models.outputs import correct

Logits = Callable[[Tensor], Tensor]


@contextmanager
def exact_float32() -> Iterator[None]:
    """TF32 off for matmuls and convolutions, cuDNN deterministic and not autotuning; restored afterwards."""
    cuda, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    saved = (cuda.allow_tf32, cudnn.allow_tf32, cudnn.deterministic, cudnn.benchmark)
    cuda.allow_tf32, cudnn.allow_tf32, cudnn.deterministic, cudnn.benchmark = False, False, True, False
    try:
        yield
    finally:
        cuda.allow_tf32, cudnn.allow_tf32, cudnn.deterministic, cudnn.benchmark = saved


@torch.no_grad()
def correct_votes(model: Logits, x: Tensor, y: Tensor, draws: int = 1) -> Tensor:
    """How many of ``draws`` passes classify each point correctly (a sequence: every digit and the length): (N,)."""
    votes = torch.zeros(len(x), dtype=torch.long, device=y.device)
    for _ in range(draws):
        votes += correct(model(x), y).long()
    return votes


def judge_correct(model: Logits, x: Tensor, y: Tensor, draws: int = 1) -> Tensor:
    """The harness's verdict (N,) bool: correct in a strict majority of ``draws`` passes, in exact float32."""
    with exact_float32():
        return 2 * correct_votes(model, x, y, draws) > draws
