"""Attacks by name: each a short class with the same shape (``robust_uatt.attacks.base.Attack``)."""

from __future__ import annotations

from robust_uatt.attacks.adapters.autoattack import AutoAttackStandard
from robust_uatt.attacks.base import Attack, Budget
from robust_uatt.attacks.noise import UniformNoise
from robust_uatt.attacks.pgd import PGDBPDA, PGDCE, PGDEq14, RegionEnum
from robust_uatt.attacks.adapters.torchattacks import TAAPGDCE, TAAPGDDLR, TACW, TAFGSM, TAPGD, TASquare
from robust_uatt.attacks.transfer import Transfer
from robust_uatt.utils.errors import UserError, unknown_name

ATTACKS: dict[str, type[Attack]] = {
    a.name: a for a in (TAPGD, TAFGSM, TAAPGDCE, TAAPGDDLR, TACW, TASquare, AutoAttackStandard, PGDCE, PGDEq14,
                        PGDBPDA, RegionEnum, UniformNoise, Transfer)
}


def get_attack(name: str) -> type[Attack]:
    if name not in ATTACKS:
        raise unknown_name("attack", name, ATTACKS)
    return ATTACKS[name]


def build_attack(name: str, *, eps: float, alpha: float | None = None, steps: int | None = None, seed: int = 0,
                 eot: int = 1, options: dict | None = None) -> Attack:
    """An attack with its budget; alpha defaults to 2.5 * eps / steps (Madry et al.)."""
    cls = get_attack(name)
    options = dict(options or {})
    unknown = set(options) - set(cls.options) - {"n_classes"}
    if unknown:
        raise unknown_name(f"option of attack {name}:", sorted(unknown)[0], cls.options)
    steps = steps or cls.default_steps
    if steps <= 0:
        raise UserError(f"steps must be positive, got {steps}")
    if eot <= 0:
        raise UserError(f"eot must be positive, got {eot}")
    alpha = alpha if alpha is not None else 2.5 * eps / steps
    return cls(Budget(eps=eps, alpha=alpha, steps=steps, seed=seed, eot=eot, options=options))


__all__ = ["ATTACKS", "Attack", "Budget", "build_attack", "get_attack"]
