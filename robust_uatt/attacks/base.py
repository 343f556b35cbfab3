"""What every attack gets and returns, in one small base class (in the spirit of torchattacks' ``Attack``).

An attack is built with its budget (eps, alpha, steps, seed, eot, options) and called as
``attack(model, x, y, index) -> x_adv``; ``index`` holds the examples' global positions in the evaluated set, so an
attack that draws random numbers can seed them per example and give the same answer whatever batch a point sits in.
The harness owns evaluation: it re-runs the model on every returned x_adv and checks that it lies in the eps-ball.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn


@dataclass
class Budget:
    """What an attack may spend; ``options`` carries attack-specific settings from the suite or the CLI."""

    eps: float
    alpha: float
    steps: int
    seed: int = 0
    eot: int = 1
    options: dict[str, Any] = field(default_factory=dict)


class Attack:
    """Subclasses set the class attributes and implement ``perturb``."""

    name: ClassVar[str]
    description: ClassVar[str]
    norm: ClassVar[str] = "Linf"
    bounded: ClassVar[bool] = True  # False: minimal-perturbation attacks (CW), not confined to the eps-ball
    white_box: ClassVar[bool] = True
    default_steps: ClassVar[int] = 10
    steps_meaning: ClassVar[str] = "iterations"
    options: ClassVar[dict[str, Any]] = {}  # accepted options and their defaults

    def __init__(self, budget: Budget) -> None:
        self.budget = budget
        self.opts = {**self.options, **budget.options}

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor, index: Tensor) -> Tensor:
        raise NotImplementedError

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, index: Tensor) -> Tensor:
        return self.perturb(model, x, y, index).detach()

    def describe(self) -> dict[str, Any]:
        b = self.budget
        return {"name": self.name, "description": self.description, "norm": self.norm, "bounded": self.bounded,
                "white_box": self.white_box, "eps": b.eps, "alpha": b.alpha, "steps": b.steps,
                "steps_meaning": self.steps_meaning, "eot": b.eot, "options": self.opts}


def per_example_uniform(x: Tensor, index: Tensor, eps: float, seed: int, salt: int = 0) -> Tensor:
    """Uniform noise in [-eps, eps] drawn from a generator seeded by (seed, salt, example index): batch-independent."""
    out = torch.empty_like(x)
    for row, i in enumerate(index.tolist()):
        g = torch.Generator().manual_seed((seed * 1_000_003 + salt * 7_919 + int(i)) % (2**63))
        out[row] = (torch.rand(x.shape[1:], generator=g) * 2 - 1).to(x) * eps
    return out


@contextmanager
def model_switches(model: nn.Module, **switches: Any) -> Iterator[None]:
    """Set attack-time attributes on the attention model (policy, grad_path, bpda_tau, top-down forced action) and
    restore them afterwards. Switches a model does not have are ignored: a plain VGG has no glimpses to detach."""
    target = getattr(model, "wrapped", model)  # through the harness's pass counter
    saved: list[tuple[object, str, Any]] = []
    try:
        for key, value in switches.items():
            obj, attr = target, key
            if key == "forced_action":
                obj = getattr(target, "top_down", None)
            if obj is None or not hasattr(obj, attr):
                continue
            saved.append((obj, attr, getattr(obj, attr)))
            setattr(obj, attr, value)
        yield
    finally:
        for obj, attr, value in reversed(saved):
            setattr(obj, attr, value)


def supports(model: nn.Module, switch: str) -> bool:
    model = getattr(model, "wrapped", model)
    if switch == "forced_action":
        return getattr(model, "top_down", None) is not None
    return hasattr(model, switch)
