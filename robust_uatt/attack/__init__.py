"""Attacks by name. Each entry adapts a torchattacks attack (not rewritten) to one shape:
``build(model, eps, alpha, steps, seed) -> attack`` where ``attack(x, y) -> x_adv``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from robust_uatt.errors import unknown_name


@dataclass(frozen=True)
class AttackSpec:
    name: str
    norm: str  # "Linf" or "L2"
    bounded: bool  # False: a minimal-perturbation attack (CW); eps does not bound it
    default_steps: int
    steps_meaning: str  # "iterations" or "queries"
    build: Callable[[nn.Module, float, float, int, int], Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]
    description: str


def _pgd(model, eps, alpha, steps, seed):
    import torchattacks

    return torchattacks.PGD(model, eps=eps, alpha=alpha, steps=steps, random_start=True)


def _fgsm(model, eps, alpha, steps, seed):
    import torchattacks

    return torchattacks.FGSM(model, eps=eps)


def _apgd_ce(model, eps, alpha, steps, seed):
    import torchattacks

    return torchattacks.APGD(model, norm="Linf", eps=eps, steps=steps, n_restarts=1, loss="ce", seed=seed)


def _cw(model, eps, alpha, steps, seed):
    import torchattacks

    return torchattacks.CW(model, c=1.0, kappa=0.0, steps=steps, lr=0.01)


def _square(model, eps, alpha, steps, seed):
    import torchattacks

    return torchattacks.Square(model, norm="Linf", eps=eps, n_queries=steps, n_restarts=1, seed=seed)


ATTACKS: dict[str, AttackSpec] = {
    a.name: a for a in [
        AttackSpec("pgd", "Linf", True, 20, "iterations", _pgd, "PGD with random start, CE loss (torchattacks.PGD)"),
        AttackSpec("fgsm", "Linf", True, 1, "iterations", _fgsm, "one signed-gradient step (torchattacks.FGSM)"),
        AttackSpec("apgd-ce", "Linf", True, 50, "iterations", _apgd_ce, "Auto-PGD, CE loss (torchattacks.APGD)"),
        AttackSpec("cw", "L2", False, 50, "iterations", _cw,
                   "Carlini-Wagner L2, c=1, kappa=0 (torchattacks.CW): minimal perturbation, not eps-bounded"),
        AttackSpec("square", "Linf", True, 5000, "queries", _square, "Square attack, black-box (torchattacks.Square)"),
    ]
}


def get_attack(name: str) -> AttackSpec:
    if name not in ATTACKS:
        raise unknown_name("attack", name, ATTACKS)
    return ATTACKS[name]
