"""AutoAttack (Croce & Hein, ICML 2020): APGD-CE, APGD-T, FAB-T, Square.

The reference implementation (``pyautoattack`` from PyPI, or fra31's GitHub ``autoattack``; bridged in
robust_uatt.utils.compat) runs whenever it is installed. Otherwise torchattacks' port runs, built from torchattacks'
own components with the same budget, and is labelled as the port in every output: it is a re-implementation, and a
RobustBench row is only comparable with the reference. ``describe()`` records the implementation and the
iterations / queries each component really ran.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from robust_uatt.attacks.base import Attack, register_attack
from robust_uatt.utils.errors import UserError

REFERENCE = "reference"
PORT = "torchattacks port"


@register_attack
class AutoAttackStandard(Attack):
    name = "autoattack"
    description = "AutoAttack 'standard' (APGD-CE, APGD-T, FAB-T, Square)"
    gradient_based = True  # its square component is gradient-free, but the others need the input gradient
    default_steps = 100  # APGD-CE, APGD-T and FAB-T iterations, as in the reference's standard version
    options = {"version": "standard", "square_queries": 5000}
    choices = {"version": ("standard",)}  # the components recorded in describe() are the standard version's

    def implementation(self) -> str:
        from robust_uatt.utils.compat import import_autoattack

        try:
            import_autoattack()
            return REFERENCE
        except UserError:
            return PORT

    def components(self) -> list[dict]:
        """What each component of the standard version runs with this budget (both implementations)."""
        steps, queries = self.budget.steps, int(self.opts["square_queries"])
        return [{"name": "apgd-ce", "iterations": steps, "restarts": 1},
                {"name": "apgd-t", "iterations": steps, "target_classes": 9},
                {"name": "fab-t", "iterations": steps, "target_classes": 9},
                {"name": "square", "queries": queries}]

    def describe(self) -> dict:
        from robust_uatt.utils.compat import autoattack_version

        impl = self.implementation()
        label = (f"autoattack (reference {autoattack_version()})" if impl == REFERENCE
                 else "autoattack (torchattacks port, not the reference)")
        return {**super().describe(), "implementation": impl, "label": label, "components": self.components()}

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor, index: Tensor) -> Tensor:
        if self.opts["version"] != "standard":
            raise UserError(f"autoattack: only version 'standard' is supported, got {self.opts['version']!r}")
        b = self.budget
        if self.implementation() == REFERENCE:
            from robust_uatt.utils.compat import run_reference_autoattack

            return run_reference_autoattack(model, x, y, eps=b.eps, seed=b.seed, iterations=b.steps,
                                            square_queries=int(self.opts["square_queries"]))
        return self._port(model, x, y, index)

    def _port(self, model: nn.Module, x: Tensor, y: Tensor, index: Tensor) -> Tensor:
        import torchattacks

        b, n_classes = self.budget, int(self.opts.get("n_classes", 10))
        torch.manual_seed(b.seed * 1_000_003 + int(index[0]))
        common = {"norm": "Linf", "eps": b.eps, "seed": b.seed}
        parts = [torchattacks.APGD(model, loss="ce", steps=b.steps, n_restarts=1, **common),
                 torchattacks.APGDT(model, steps=b.steps, n_restarts=1, n_classes=n_classes, **common),
                 torchattacks.FAB(model, multi_targeted=True, steps=b.steps, n_restarts=1, n_classes=n_classes,
                                  **common),
                 torchattacks.Square(model, n_queries=int(self.opts["square_queries"]), n_restarts=1, **common)]
        attack = torchattacks.MultiAttack(parts)
        for part in [attack, *parts]:
            part.set_model_training_mode(model_training=False)
        return attack(x, y)
