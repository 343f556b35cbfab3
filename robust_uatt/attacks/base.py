"""What every attack gets and returns, in one small base class (in the spirit of torchattacks' ``Attack``).

An attack is built with its budget (eps, alpha, steps, seed, eot, options) and called as
``attack(model, x, y, index=None) -> x_adv``; ``index`` holds the examples' global positions in the evaluated set
(default ``0..B-1``), so an attack that draws random numbers can seed them per example and give the same answer
whatever batch a point sits in. The call puts the model in eval mode and freezes its parameters for the attack's
duration, restoring both afterwards (as torchattacks' base class does), so a library caller gets the harness's
guarantees; an attack that flipped the model into train mode is recorded in ``left_train_mode``.
The harness owns evaluation: it re-runs the model on every returned x_adv and checks that it lies in the eps-ball.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
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


ATTACKS: dict[str, type["Attack"]] = {}  # name -> class, filled by @register_attack


def register_attack(cls: type["Attack"]) -> type["Attack"]:
    """Class decorator: make an attack available by its ``name`` (``--attack``, suites, ``make_attack``)."""
    if cls.name in ATTACKS:
        raise ValueError(f"attack '{cls.name}' is registered twice")
    ATTACKS[cls.name] = cls
    return cls


class Attack:
    """Subclasses set the class attributes and implement ``perturb``."""

    name: ClassVar[str]
    description: ClassVar[str]
    norm: ClassVar[str] = "Linf"
    bounded: ClassVar[bool] = True  # False: minimal-perturbation attacks (CW), not confined to the eps-ball
    white_box: ClassVar[bool] = True
    gradient_based: ClassVar[bool] = False  # ascends an input gradient: the harness probes it first (gradient_probe)
    default_steps: ClassVar[int] = 10
    steps_meaning: ClassVar[str] = "iterations"
    options: ClassVar[dict[str, Any]] = {}  # accepted options and their defaults
    choices: ClassVar[dict[str, tuple[str, ...]]] = {}  # the values a text option may take
    # Whether the attack handles sequence models (logits (B, K, S), labels (B, S); models.outputs): our own loops do,
    # the library adapters assume (B, K) logits and are refused for them.
    sequences: ClassVar[bool] = False

    def __init__(self, budget: Budget) -> None:
        self.budget = budget
        self.opts = {**self.options, **budget.options}
        self.left_train_mode: list[str] = []  # submodules the last call found in train mode afterwards (restored)
        self.notes: list[str] = []

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor, index: Tensor) -> Tensor:
        raise NotImplementedError

    def prepare(self, model: nn.Module) -> None:
        """Adapt to the model before the run (e.g. a gradient path it lacks); record what changed in ``notes``."""

    def objective(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        """The scalar the attack ascends (summed over the batch), with its model switches: what the harness probes
        for a non-zero input gradient before the first batch. Cross-entropy on the logits unless overridden."""
        return torch.nn.functional.cross_entropy(model(x), y, reduction="sum")

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, index: Tensor | None = None) -> Tensor:
        """Adversarial examples (B, C, H, W) in [0, 1] for images x (B, C, H, W) in [0, 1] and labels y (B,)."""
        if index is None:
            index = torch.arange(len(x))
        was_training = model.training
        flags = [p.requires_grad for p in model.parameters()]
        model.eval().requires_grad_(False)
        try:
            adv = self.perturb(model, x, y, index).detach()
            self.left_train_mode = [name or "(the model)" for name, m in model.named_modules() if m.training]
        finally:
            model.train(was_training)
            for p, flag in zip(model.parameters(), flags):
                p.requires_grad_(flag)
        return adv

    def describe(self) -> dict[str, Any]:
        b = self.budget
        return {"name": self.name, "description": self.description, "norm": self.norm, "bounded": self.bounded,
                "white_box": self.white_box, "eps": b.eps, "alpha": b.alpha, "steps": b.steps,
                "steps_meaning": self.steps_meaning, "eot": b.eot, "options": self.opts,
                **({"notes": list(self.notes)} if self.notes else {})}


def input_gradient(loss_of: Any, x: Tensor) -> Tensor | None:
    """d loss / d x for ``loss_of(x_leaf)``; None when the loss has no autograd path to x (a detached input)."""
    xg = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        loss = loss_of(xg)
        if not loss.requires_grad:
            return None
        return torch.autograd.grad(loss, xg, allow_unused=True)[0]


class EOTLogits(nn.Module):
    """Expectation over transformation for attacks without their own: the mean logits of ``draws`` passes of a
    randomized model (``--policy sample``). Square and FAB-T query this instead of one random draw."""

    def __init__(self, model: nn.Module, draws: int) -> None:
        super().__init__()
        self.model = model
        self.draws = draws

    def forward(self, x: Tensor) -> Tensor:
        return torch.stack([self.model(x) for _ in range(self.draws)]).mean(0)


def with_eot(model: nn.Module, draws: int) -> nn.Module:
    """``model`` itself for one draw, else its EOT average (in the model's own train/eval mode)."""
    return model if draws <= 1 else EOTLogits(model, draws).train(model.training)


def per_example_uniform(x: Tensor, index: Tensor, eps: float, seed: int, salt: int = 0) -> Tensor:
    """Uniform noise in [-eps, eps] drawn from a generator seeded by (seed, salt, example index): batch-independent."""
    out = torch.empty_like(x)
    for row, i in enumerate(index.tolist()):
        g = torch.Generator().manual_seed((seed * 1_000_003 + salt * 7_919 + int(i)) % (2**63))
        out[row] = (torch.rand(x.shape[1:], generator=g) * 2 - 1).to(x) * eps
    return out


def attack_mode(model: nn.Module, *, grad_path: str | None = None, bpda_tau: float | None = None,
                forced_action: int | None = None) -> AbstractContextManager[None]:
    """The model's own ``attack_mode`` (the attention model: gradient path, BPDA, forced top-down region), or
    nothing for a model without one: a plain VGG has no glimpses to detach."""
    mode = getattr(model, "attack_mode", None)
    if mode is None:
        return nullcontext()
    return mode(grad_path=grad_path, bpda_tau=bpda_tau, forced_action=forced_action)


def has_top_down(model: nn.Module) -> bool:
    """Whether the model makes a top-down region choice that ``attack_mode(forced_action=...)`` can force."""
    return getattr(model, "top_down", None) is not None
