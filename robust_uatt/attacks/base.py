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

import math
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from robust_uatt.utils.errors import UserError, unknown_name


@dataclass(frozen=True)
class Rule:
    """The range a numeric option must lie in beyond its default's type (inclusive; ``above`` exclusive). Text
    options list their values in ``Attack.choices``."""

    low: float | None = None
    above: float | None = None
    high: float | None = None


def _kind(default: Any) -> str:
    """The kind of value an option takes, from its default: bool, int, float (ints too), str; '' for no default."""
    if isinstance(default, (bool, int, float, str)):
        return type(default).__name__
    return ""


def _finite_number(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:  # an integer beyond float range
        return False


def check_option(attack: str, key: str, value: Any, default: Any, rule: Rule | None, where: str = "",
                 choices: tuple[Any, ...] = ()) -> None:
    """Raise a UserError unless ``value`` has the default's type, is one of ``choices`` (if any) and obeys ``rule``
    (the message quotes the value)."""
    at = f" in {where}" if where else ""
    got = repr(value) if len(repr(value)) <= 60 else f"{repr(value)[:57]}..."
    kind = _kind(default)
    ok = {"bool": isinstance(value, bool), "int": isinstance(value, int) and not isinstance(value, bool),
          "float": _finite_number(value), "str": isinstance(value, str), "": True}[kind]
    if not ok:
        raise UserError(f"option {key} of attack {attack}{at} must be {kind} (like {default!r}), got {got}")
    if choices and value not in choices:
        raise unknown_name(f"{key} of attack {attack}{at}:", str(value), choices)
    if rule is None:
        return
    if rule.low is not None and value < rule.low:
        raise UserError(f"option {key} of attack {attack}{at} must be >= {rule.low}, got {got}")
    if rule.above is not None and value <= rule.above:
        raise UserError(f"option {key} of attack {attack}{at} must be > {rule.above}, got {got}")
    if rule.high is not None and value > rule.high:
        raise UserError(f"option {key} of attack {attack}{at} must be <= {rule.high}, got {got}")


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
    uses_alpha: ClassVar[bool] = False  # True for attacks that step by alpha (then alpha 0 is refused)
    options: ClassVar[dict[str, Any]] = {}  # accepted options and their defaults (whose type a value must have)
    choices: ClassVar[dict[str, tuple[str, ...]]] = {}  # the values a text option may take
    # Whether the attack handles sequence models (logits (B, K, S), labels (B, S); models.outputs): our own loops do,
    # the library adapters assume (B, K) logits and are refused for them.
    sequences: ClassVar[bool] = False
    option_rules: ClassVar[dict[str, Rule]] = {}  # the ranges numeric options must lie in
    internal_options: ClassVar[frozenset[str]] = frozenset({"n_classes"})  # set by the harness, not by users

    def __init__(self, budget: Budget) -> None:
        """Validate the budget and every option now, before any output exists: a wrong value is a UserError."""
        self.check_budget(budget)
        self.check_options(budget.options, internal=True)
        self.budget = budget
        self.opts = {**self.options, **budget.options}
        self.left_train_mode: list[str] = []  # submodules the last call found in train mode afterwards (restored)
        self.notes: list[str] = []

    @classmethod
    def check_options(cls, options: dict[str, Any], where: str = "", internal: bool = False) -> None:
        """Types (from the defaults), ranges and choices of user-given options; unknown names are refused, and so
        are the harness's own options (``internal_options``) unless ``internal``."""
        for key, value in options.items():
            if key in cls.internal_options and internal:
                continue
            if key not in cls.options or key in cls.internal_options:
                raise unknown_name(f"option of attack {cls.name}{f' in {where}' if where else ''}:", key, cls.options)
            check_option(cls.name, key, value, cls.options[key], cls.option_rules.get(key), where,
                         cls.choices.get(key, ()))

    @classmethod
    def check_budget(cls, b: Budget) -> None:
        """eps in [0, 1], a positive finite step size (an attack with alpha 0 never moves), steps and eot >= 1."""
        if not (isinstance(b.eps, (int, float)) and math.isfinite(b.eps) and 0 <= b.eps <= 1):
            raise UserError(f"{cls.name}: eps must lie in [0, 1], got {b.eps!r}")
        if not (isinstance(b.alpha, (int, float)) and math.isfinite(b.alpha) and b.alpha >= 0):
            raise UserError(f"{cls.name}: the step size alpha must be a finite number >= 0, got {b.alpha!r}")
        if b.alpha == 0 and b.eps > 0 and cls.uses_alpha:
            raise UserError(f"{cls.name}: the step size alpha must be > 0 (with alpha 0 the attack never moves)")
        for key in ("steps", "eot"):
            value = getattr(b, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UserError(f"{cls.name}: {key} must be a positive integer, got {value!r}")

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
