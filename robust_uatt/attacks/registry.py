"""Attacks by name: each a short class with the same shape (``robust_uatt.attacks.base.Attack``)."""

from __future__ import annotations

from typing import Any

from robust_uatt.attacks import noise, pgd, transfer  # noqa: F401  (importing registers each attack)
from robust_uatt.attacks.adapters import autoattack, targeted, torchattacks  # noqa: F401
from robust_uatt.attacks.base import ATTACKS, Attack, Budget
from robust_uatt.utils.errors import UserError, unknown_name


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
    for key, value in options.items():
        _check_option(name, key, value, cls.options.get(key))
        if key in cls.choices and value not in cls.choices[key]:
            raise unknown_name(f"{key} of attack {name}:", str(value), cls.choices[key])
    steps = steps or cls.default_steps
    if steps <= 0:
        raise UserError(f"steps must be positive, got {steps}")
    if eot <= 0:
        raise UserError(f"eot must be positive, got {eot}")
    alpha = alpha if alpha is not None else 2.5 * eps / steps
    return cls(Budget(eps=eps, alpha=alpha, steps=steps, seed=seed, eot=eot, options=options))


def _check_option(attack: str, key: str, value: Any, default: Any) -> None:
    """An option value must have its default's kind: ``early_stop=false`` is a bool, ``restarts=abc`` an error."""
    if default is None:  # no typed default (objects such as the transfer source)
        return
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, (int, float)):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and (
            isinstance(value, int) or not isinstance(default, int))
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise UserError(f"option {key} of attack {attack} must be {type(default).__name__} (like {default!r}), "
                        f"got {value!r}")


__all__ = ["ATTACKS", "Attack", "Budget", "build_attack", "get_attack"]
