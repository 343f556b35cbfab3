"""Run one attack over the first n test images and account for every example.

Only points the model classifies correctly are attacked; a point misclassified clean counts as broken, so robust
accuracy never exceeds clean accuracy. Each batch is seeded with (seed, batch index), so attacking a batch gives the
same result whatever ran before it.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch import nn

from robust_uatt.attack import AttackSpec
from robust_uatt.data import Split, to_float
from robust_uatt.errors import UserError

_EPS_RE = re.compile(r"^\s*(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?\s*(/\s*(\d+(\.\d*)?|\.\d+)\s*)?$")


def parse_eps(text: str) -> float:
    """'8/255', '0.3', '0' -> float in [0, 1] (pixel units of images scaled to [0, 1])."""
    if not isinstance(text, str) or not _EPS_RE.match(text):
        raise UserError(f"cannot parse eps '{text}' (use a number like 0.3 or a fraction like 8/255)")
    num, _, den = text.partition("/")
    try:
        value = float(Fraction(num.strip())) / (float(Fraction(den.strip())) if den else 1.0)
    except (ValueError, ZeroDivisionError):
        raise UserError(f"cannot parse eps '{text}' (division by zero?)") from None
    if not math.isfinite(value) or value < 0 or value > 1:
        raise UserError(f"eps must lie in [0, 1] (pixel units of [0,1] images), got {text} = {value:g}")
    return value


@contextmanager
def frozen_parameters(model: nn.Module) -> Iterator[None]:
    """No autograd on parameters while attacking (only input gradients are needed); restored afterwards."""
    flags = [p.requires_grad for p in model.parameters()]
    model.requires_grad_(False)
    try:
        yield
    finally:
        for p, f in zip(model.parameters(), flags):
            p.requires_grad_(f)


@dataclass
class AttackOutcome:
    clean_correct: torch.Tensor  # bool (n,)
    robust_correct: torch.Tensor  # bool (n,)
    max_linf: float  # largest |x_adv - x|_inf over attacked points
    max_l2: float
    seconds: float


def run_attack(model: nn.Module, spec: AttackSpec, data: Split, *, eps: float, alpha: float, steps: int,
               batch_size: int, seed: int, device: torch.device, console: Console | None = None) -> AttackOutcome:
    model.eval()
    n = len(data)
    clean = torch.zeros(n, dtype=torch.bool)
    robust = torch.zeros(n, dtype=torch.bool)
    max_linf, max_l2 = 0.0, 0.0
    t0 = time.perf_counter()
    with frozen_parameters(model), _progress(console) as progress:
        task = progress.add_task(spec.name, total=n)
        for b, start in enumerate(range(0, n, batch_size)):
            x = to_float(data.x[start:start + batch_size].to(device, non_blocking=True))
            y = data.y[start:start + batch_size].to(device, non_blocking=True)
            with torch.inference_mode():
                ok = model(x).argmax(1) == y
            clean[start:start + len(y)] = ok.cpu()
            if ok.any() and (eps > 0 or not spec.bounded):
                torch.manual_seed(seed * 1_000_003 + b)
                x_ok, y_ok = x[ok], y[ok]
                adv = spec.build(model, eps, alpha, steps, seed)(x_ok, y_ok).detach()
                delta = (adv - x_ok).flatten(1)
                if not torch.isfinite(adv).all() or adv.min() < 0 or adv.max() > 1:
                    raise RuntimeError(f"{spec.name} returned images outside [0,1] or with NaN")
                linf = float(delta.abs().max())
                if spec.bounded and linf > eps + 1e-6:
                    raise RuntimeError(f"{spec.name} left the eps-ball: |delta|_inf = {linf} > {eps}")
                max_linf, max_l2 = max(max_linf, linf), max(max_l2, float(delta.norm(dim=1).max()))
                with torch.inference_mode():
                    still = model(adv).argmax(1) == y_ok
                idx = torch.nonzero(ok.cpu()).flatten() + start
                robust[idx] = still.cpu()
            elif eps == 0:
                robust[start:start + len(y)] = ok.cpu()
            progress.update(task, advance=len(y))
    return AttackOutcome(clean, robust, max_linf, max_l2, time.perf_counter() - t0)


def _progress(console: Console | None) -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                    TimeElapsedColumn(), TimeRemainingColumn(), console=console or Console(stderr=True),
                    transient=True)


def summarize(outcome: AttackOutcome) -> dict[str, Any]:
    n = len(outcome.clean_correct)
    return {"n": n, "clean_accuracy": float(outcome.clean_correct.float().mean()),
            "robust_accuracy": float(outcome.robust_correct.float().mean()),
            "max_linf": outcome.max_linf, "max_l2": outcome.max_l2, "seconds": outcome.seconds,
            "images_per_s": n / outcome.seconds if outcome.seconds else None}
