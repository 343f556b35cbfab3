"""Attacks: the registry (by name), the base class, one module per attack, adapters to torchattacks/AutoAttack."""

from robust_uatt.attacks.base import Attack, Budget
from robust_uatt.attacks.registry import ATTACKS, build_attack, get_attack

__all__ = ["ATTACKS", "Attack", "Budget", "build_attack", "get_attack"]
