"""``robust-uatt selftest``: plant the classic evaluation failures and show that the sanity checks catch each one.

A small CNN is trained in seconds on synthetic, separable images (class k = a bright square at one of ten places),
then wrapped four ways: a gradient killer (identity forward, zero backward), a softmax on top of the logits, an input
quantizer (rounding: zero gradient almost everywhere), and a randomized model (fresh input noise every pass). The
healthy model must pass every gating check; each broken one must fail at least one.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robust_uatt.attacks import build_attack
from robust_uatt.data.datasets import Split
from robust_uatt.evaluation.checks import Check, check_model, check_run, gate
from robust_uatt.evaluation.harness import run_suite


def synthetic_squares(n: int, hw: int, channels: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images (N, hw, hw[, C]) and labels: class k is a bright square at one of 10 places over dark noise."""
    rng = np.random.default_rng(seed)
    y = (np.arange(n) % 10).astype(np.int64)
    rng.shuffle(y)
    x = rng.integers(0, 60, size=(n, hw, hw, channels), dtype=np.uint8)
    s = hw // 4
    for k in range(10):
        r, c = (k // 4) * s, (k % 4) * s
        x[y == k, r:r + s, c:c + s, :] = 230
    return (x[..., 0] if channels == 1 else x), y


class _KillGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        return x.clone()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        return torch.zeros_like(grad)


class GradientKiller(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: Tensor) -> Tensor:
        return self.inner(_KillGradient.apply(x))


class SoftmaxOutput(GradientKiller):
    def forward(self, x: Tensor) -> Tensor:
        return F.softmax(self.inner(x), dim=1)


class InputQuantizer(GradientKiller):
    def forward(self, x: Tensor) -> Tensor:
        return self.inner(torch.round(x * 8) / 8)


class Randomized(GradientKiller):
    def forward(self, x: Tensor) -> Tensor:
        return self.inner((x + 0.15 * torch.randn_like(x)).clamp(0, 1))


BROKEN = {"gradient killer": GradientKiller, "softmax on logits": SoftmaxOutput, "input quantizer": InputQuantizer,
          "randomized model": Randomized}


def fit_small_cnn(x: Tensor, y: Tensor, channels: int = 16, steps: int = 200) -> nn.Module:
    """A one-conv network fitted full-batch with Adam on uint8 NCHW images: seconds on a CPU, ~100% on the squares."""
    model = nn.Sequential(nn.Conv2d(x.shape[1], channels, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4),
                          nn.Flatten(), nn.Linear(channels * 16, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        loss = F.cross_entropy(model(x.float() / 255), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def train_healthy(seed: int = 0) -> tuple[nn.Module, Split]:
    torch.manual_seed(seed)
    x, y = synthetic_squares(400, 32, 3, seed=seed)
    xs = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
    ys = torch.from_numpy(y)
    return fit_small_cnn(xs[:300], ys[:300]), Split(xs[300:], ys[300:], "synthetic squares")


def evaluate(model: nn.Module, data: Split, seed: int = 0) -> list[Check]:
    attacks = [build_attack("pgd-ce", eps=8 / 255, steps=10, seed=seed), build_attack("noise", eps=8 / 255, steps=20,
                                                                                      seed=seed)]
    outcome = run_suite(model, attacks, data, batch_size=100, device=torch.device("cpu"))
    checks = check_model(model, data, outcome.clean_correct, num_classes=10, device=torch.device("cpu"), seed=seed,
                         stochastic=False)
    return checks + check_run(outcome, [a.describe() for a in attacks])


def run_selftest(seed: int = 0) -> dict[str, dict[str, Any]]:
    """{model name: {"caught": bool, "failed": [check names]}}; the healthy model is "caught" if it fails any."""
    healthy, data = train_healthy(seed)
    results = {}
    for name, wrap in {"healthy model": None, **BROKEN}.items():
        model = healthy if wrap is None else wrap(healthy).eval()
        checks = evaluate(model, data, seed)
        valid, _ = gate(checks)
        results[name] = {"caught": not valid, "failed": [c.name for c in checks if c.failed_gate()]}
    return results
