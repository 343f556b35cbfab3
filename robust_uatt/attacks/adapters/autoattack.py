"""AutoAttack: the reference implementation (``pyautoattack``/``autoattack``, via robust_uatt.utils.compat) when
installed, else torchattacks' port, which runs fewer iterations — the result records which one ran."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from robust_uatt.attacks.base import Attack, register_attack
from robust_uatt.utils.errors import UserError


@register_attack
class AutoAttackStandard(Attack):
    name = "autoattack"
    description = "AutoAttack 'standard' (APGD-CE, APGD-T, FAB-T, Square)"
    default_steps = 100
    options = {"version": "standard"}
    choices = {"version": ("standard", "plus", "rand")}

    def implementation(self) -> str:
        from robust_uatt.utils.compat import import_autoattack

        try:
            import_autoattack()
            return "reference (pyautoattack)"
        except UserError:
            return "torchattacks port (10 APGD steps, not the reference's 100)"

    def describe(self) -> dict:
        return {**super().describe(), "implementation": self.implementation()}

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor, index: Tensor) -> Tensor:
        b = self.budget
        if self.implementation().startswith("reference"):
            from robust_uatt.utils.compat import import_autoattack

            aa = import_autoattack().AutoAttack(model, norm="Linf", eps=b.eps, version=self.opts["version"],
                                                seed=b.seed, verbose=False)
            return aa.run_standard_evaluation(x, y, bs=len(x))
        import torchattacks

        torch.manual_seed(b.seed * 1_000_003 + int(index[0]))
        attack = torchattacks.AutoAttack(model, norm="Linf", eps=b.eps, version=self.opts["version"],
                                         n_classes=int(self.opts.get("n_classes", 10)), seed=b.seed)
        attack.set_model_training_mode(model_training=False)
        return attack(x, y)
