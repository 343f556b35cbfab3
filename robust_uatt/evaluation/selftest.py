"""``robust-uatt selftest``: plant the classic gradient-masking tricks on a real model and show that each one ends
near the undefended model's robust accuracy or INVALID with the right reason.

A small CNN is trained in seconds on real CIFAR-10 images (the first 5,000 training images: ~45% clean accuracy,
~0% robust at 8/255), then wrapped eight ways, each of which inflates a naive PGD's robust accuracy: a gradient
killer (identity forward, zero backward), a softmax on the logits, random backward gradients, the gradient killed
on about a third of the points (those the CNN puts in classes 0-2), logits scaled by 1e4 (a saturated softmax),
8-level input quantization, a detached input and forward noise. Each is attacked (PGD-CE-10 and the gradient-free
noise probe) and checked as ``robust-uatt attack`` does; a plant is caught when the verdict is INVALID naming the
expected symptom, or when its worst-case robust accuracy is within 5 points of the undefended model's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robust_uatt.attacks import build_attack
from robust_uatt.data.datasets import Split, load_split
from robust_uatt.evaluation.checks import Check, check_model, check_run, gate
from robust_uatt.evaluation.harness import run_suite, summarize

EPS = 8 / 255
NEAR = 0.05  # "near the undefended model": within 5 points of its worst case


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


class _RandomGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        return x.clone()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        return torch.randn_like(grad)


class SoftmaxOutput(GradientKiller):
    def forward(self, x: Tensor) -> Tensor:
        return F.softmax(self.inner(x), dim=1)


class RandomGradient(GradientKiller):
    """Identity forward; a random input gradient backward (shattered gradients)."""

    def forward(self, x: Tensor) -> Tensor:
        return self.inner(_RandomGradient.apply(x))


class PartialGradientKiller(GradientKiller):
    """Zero input gradient on the points the model puts in classes 0-2 (about a third), exact elsewhere."""

    def forward(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            masked = (self.inner(x).argmax(1) < 3).to(x.dtype).view(-1, *[1] * (x.dim() - 1))
        return self.inner(masked * _KillGradient.apply(x) + (1 - masked) * x)


class ScaledLogits(GradientKiller):
    """Logits x 1e4: the same predictions, a softmax saturated to exact zeros and ones in float32."""

    def forward(self, x: Tensor) -> Tensor:
        return self.inner(x) * 1e4


class InputQuantizer(GradientKiller):
    """8 grey levels per channel (rounding: zero gradient almost everywhere)."""

    def forward(self, x: Tensor) -> Tensor:
        return self.inner(torch.round(x * 7) / 7)


class DetachedInput(GradientKiller):
    def forward(self, x: Tensor) -> Tensor:
        return self.inner(x.detach())


class Randomized(GradientKiller):
    """Fresh Gaussian input noise on every pass."""

    def forward(self, x: Tensor) -> Tensor:
        return self.inner((x + 0.03 * torch.randn_like(x)).clamp(0, 1))


@dataclass(frozen=True)
class Plant:
    wrap: type[nn.Module]
    symptoms: frozenset[str]  # the gating checks that name this trick


BROKEN = {
    "gradient killer": Plant(GradientKiller, frozenset({"input gradients"})),
    "softmax on logits": Plant(SoftmaxOutput, frozenset({"logits, not softmax"})),
    "random backward gradients": Plant(RandomGradient, frozenset({"attack loss rises"})),
    "gradient killed on ~1/3": Plant(PartialGradientKiller, frozenset({"input gradients"})),
    "logits x 1e4": Plant(ScaledLogits, frozenset({"input gradients", "attack loss rises"})),
    "8-level input quantization": Plant(InputQuantizer, frozenset({"input gradients"})),
    "detached input": Plant(DetachedInput, frozenset({"input gradients"})),
    "forward noise": Plant(Randomized, frozenset({"deterministic (5 passes)"})),
}


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
    """The synthetic-squares CNN (unit tests of the harness plumbing; 100% robust, so no use for masking)."""
    torch.manual_seed(seed)
    x, y = synthetic_squares(400, 32, 3, seed=seed)
    xs = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
    ys = torch.from_numpy(y)
    return fit_small_cnn(xs[:300], ys[:300]), Split(xs[300:], ys[300:], "synthetic squares")


def cifar_cnn(channels: int = 32) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, channels, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(channels, 2 * channels, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(2 * channels * 64, 10))


def train_cifar_cnn(data_dir: str | None = None, seed: int = 0, n_train: int = 5000, epochs: int = 3,
                    n_test: int = 200) -> tuple[nn.Module, Split]:
    """A two-conv CNN trained in seconds (CPU) on the first ``n_train`` real CIFAR-10 training images; returns it
    in eval mode with the first ``n_test`` test images. Deterministic for a seed."""
    train = load_split("cifar10", "train", data_dir, download=False)
    test = load_split("cifar10", "test", data_dir, download=False)
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = cifar_cnn()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    x, y = train.x[:n_train], train.y[:n_train]
    for _ in range(epochs):
        for batch in torch.randperm(len(x), generator=g).split(128):
            loss = F.cross_entropy(model(x[batch].float() / 255), y[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval(), test.subset(slice(0, n_test))


def evaluate(model: nn.Module, data: Split, seed: int = 0) -> tuple[list[Check], dict[str, Any]]:
    """PGD-CE-10 and the noise probe at 8/255, then the checks ``robust-uatt attack`` runs; (checks, summary)."""
    torch.manual_seed(seed)  # the plants that draw random numbers draw the same ones every time
    attacks = [build_attack("pgd-ce", eps=EPS, steps=10, seed=seed), build_attack("noise", eps=EPS, steps=20,
                                                                                  seed=seed)]
    outcome = run_suite(model, attacks, data, batch_size=100, device=torch.device("cpu"))
    checks = check_model(model, data, outcome.clean_correct, num_classes=10, device=torch.device("cpu"), seed=seed,
                         stochastic=False, attacks=attacks, eps=EPS)
    summary = summarize(outcome)
    summary["naive_robust_accuracy"] = 1 - len(outcome.records[0].broken) / max(1, len(data)) - \
        (1 - summary["clean_accuracy"])  # what PGD alone reports
    return checks + check_run(outcome, [a.describe() for a in attacks]), summary


def run_selftest(seed: int = 0, data_dir: str | None = None, n: int = 200) -> dict[str, dict[str, Any]]:
    """{model: {clean, naive, worst_case, verdict, failed, expected, caught}}; the undefended model is "caught"
    when it is INVALID (it must be valid)."""
    healthy, data = train_cifar_cnn(data_dir, seed, n_test=n)
    results: dict[str, dict[str, Any]] = {}
    for name, plant in {"undefended model": None, **BROKEN}.items():
        model = healthy if plant is None else plant.wrap(healthy).eval()
        checks, summary = evaluate(model, data, seed)
        valid, _ = gate(checks)
        failed = [c.name for c in checks if c.failed_gate()]
        results[name] = {"clean": summary["clean_accuracy"], "naive": summary["naive_robust_accuracy"],
                         "worst_case": summary["robust_accuracy"], "verdict": "valid" if valid else "INVALID",
                         "failed": failed, "expected": sorted(plant.symptoms) if plant else []}
    baseline = results["undefended model"]["worst_case"]
    for name, r in results.items():
        if name == "undefended model":
            r["caught"] = r["verdict"] == "INVALID"
        else:
            named = bool(set(r["failed"]) & set(r["expected"]))
            r["caught"] = named or (r["verdict"] == "valid" and r["worst_case"] <= baseline + NEAR)
    return results
