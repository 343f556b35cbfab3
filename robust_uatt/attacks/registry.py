"""Attacks by name: each a short class with the same shape (``robust_uatt.attacks.base.Attack``)."""

from __future__ import annotations

from robust_uatt.attacks import noise, pgd, transfer  # noqa: F401  (importing registers each attack)
from robust_uatt.attacks.adapters import autoattack, targeted, torchattacks  # noqa: F401
from robust_uatt.attacks.base import ATTACKS, Attack, Budget, Rule
from robust_uatt.utils.errors import UserError, unknown_name


def get_attack(name: str) -> type[Attack]:
    if name not in ATTACKS:
        raise unknown_name("attack", name, ATTACKS)
    return ATTACKS[name]


def build_attack(name: str, *, eps: float, alpha: float | None = None, steps: int | None = None, seed: int = 0,
                 eot: int = 1, options: dict | None = None) -> Attack:
    """An attack with its budget; alpha defaults to 2.5 * eps / steps (Madry et al.). The attack validates its
    budget and options (names, types, choices, ranges) when it is constructed: a bad value is a UserError."""
    cls = get_attack(name)
    options = dict(options or {})
    steps = cls.default_steps if steps is None else steps  # 0 is refused, never silently the default
    if isinstance(steps, bool) or not isinstance(steps, int) or steps <= 0:
        raise UserError(f"{name}: steps must be a positive integer, got {steps!r}")
    alpha = alpha if alpha is not None else 2.5 * eps / steps
    return cls(Budget(eps=eps, alpha=alpha, steps=steps, seed=seed, eot=eot, options=options))


__all__ = ["ATTACKS", "Attack", "Budget", "Rule", "build_attack", "get_attack"]
