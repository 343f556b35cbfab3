"""AutoAttack's targeted attacks, not rewritten: APGD-T and FAB-T from the reference implementation (``pyautoattack``
/ ``autoattack``, through robust_uatt.utils.compat) when installed, else torchattacks' ports of the same code.

Both try the ``n_target_classes`` most likely wrong classes in turn (9 on CIFAR-10, AutoAttack's setting; capped at
classes - 1). A targeted margin attack finds adversarial examples that the untargeted CE loss misses on models whose
logits are flat or saturated (Croce & Hein 2020). Randomness is seeded per batch (the first example's position).
The implementation that ran is recorded in results.json (``implementation``).
"""

from __future__ import annotations

import importlib
from types import ModuleType

import torch
from torch import Tensor, nn

from robust_uatt.attacks.base import Attack, register_attack, with_eot
from robust_uatt.utils.errors import UserError

IMPLEMENTATIONS = ("auto", "reference", "torchattacks")


def _reference(submodule: str) -> ModuleType | None:
    """``autoattack.<submodule>`` from the reference package, or None when it is not installed."""
    from robust_uatt.utils.compat import import_autoattack

    try:
        import_autoattack()
    except UserError:
        return None
    return importlib.import_module(f"autoattack.{submodule}")


class TargetedAttack(Attack):
    default_steps = 100
    options = {"n_target_classes": 9, "restarts": 1, "implementation": "auto"}
    choices = {"implementation": IMPLEMENTATIONS}
    submodule: str

    def reference(self) -> ModuleType | None:
        if self.opts["implementation"] == "torchattacks":
            return None
        module = _reference(self.submodule)
        if module is None and self.opts["implementation"] == "reference":
            raise UserError(f"{self.name}: the reference AutoAttack is not installed "
                            "(pip install 'robust-uatt[robustbench]'), or use implementation=torchattacks")
        return module

    def implementation(self) -> str:
        return "reference (pyautoattack)" if self.reference() is not None else "torchattacks port"

    def describe(self) -> dict:
        return {**super().describe(), "implementation": self.implementation()}

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor, index: Tensor) -> Tensor:
        with torch.no_grad():
            n_classes = int(model(x[:1]).shape[1])
        targets = max(1, min(int(self.opts["n_target_classes"]), n_classes - 1))
        seed = (self.budget.seed * 1_000_003 + int(index[0])) % (2**31)
        torch.manual_seed(seed)
        module = self.reference()
        if self.name != "apgd-t":  # APGD-T averages EOT gradients itself (eot_iter); FAB-T queries the EOT mean
            model = with_eot(model, self.budget.eot)
        if module is not None:
            return self.run_reference(module, model, x, y, seed, targets)
        return self.run_port(model, x, y, seed, n_classes, targets)

    def run_reference(self, module: ModuleType, model: nn.Module, x: Tensor, y: Tensor, seed: int,
                      targets: int) -> Tensor:
        raise NotImplementedError

    def run_port(self, model: nn.Module, x: Tensor, y: Tensor, seed: int, n_classes: int, targets: int) -> Tensor:
        raise NotImplementedError


@register_attack
class APGDT(TargetedAttack):
    name = "apgd-t"
    description = "Auto-PGD on the targeted DLR loss, each of the most likely wrong classes in turn (AutoAttack's " \
                  "APGD-T)"
    submodule = "autopgd_base"

    def run_reference(self, module, model, x, y, seed, targets):
        b = self.budget
        attack = module.APGDAttack_targeted(model, n_iter=b.steps, norm="Linf", n_restarts=int(self.opts["restarts"]),
                                            eps=b.eps, seed=seed, eot_iter=b.eot, n_target_classes=targets,
                                            device=x.device, verbose=False)
        return attack.perturb(x, y)

    def run_port(self, model, x, y, seed, n_classes, targets):
        import torchattacks

        b = self.budget
        attack = torchattacks.APGDT(model, norm="Linf", eps=b.eps, steps=b.steps,
                                    n_restarts=int(self.opts["restarts"]), seed=seed, eot_iter=b.eot,
                                    n_classes=targets + 1)
        attack.set_model_training_mode(model_training=False)
        return attack(x, y)


@register_attack
class FABT(TargetedAttack):
    name = "fab-t"
    description = "targeted FAB: the smallest L-inf step to the boundary of each likely wrong class, kept if within " \
                  "eps (AutoAttack's FAB-T)"
    submodule = "fab_pt"

    def run_reference(self, module, model, x, y, seed, targets):
        b = self.budget
        attack = module.FABAttack_PT(model, norm="Linf", n_restarts=int(self.opts["restarts"]), n_iter=b.steps,
                                     eps=b.eps, seed=seed, targeted=True, n_target_classes=targets, device=x.device,
                                     verbose=False)
        return attack.perturb(x, y)

    def run_port(self, model, x, y, seed, n_classes, targets):
        import torchattacks

        b = self.budget
        attack = torchattacks.FAB(model, norm="Linf", eps=b.eps, steps=b.steps, n_restarts=int(self.opts["restarts"]),
                                  seed=seed, multi_targeted=True, n_classes=targets + 1)
        attack.set_model_training_mode(model_training=False)
        return attack(x, y)
