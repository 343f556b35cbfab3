"""torchattacks' attacks (not rewritten), adapted to the one Attack shape. torchattacks draws its randomness from
torch's global generator (or its own ``seed``), so these are seeded per batch, not per example."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from robust_uatt.attacks.base import Attack, register_attack, with_eot


class TorchattacksAttack(Attack):
    native_eot = False  # True: the attack averages EOT gradients itself (APGD's eot_iter)

    gradient_based = True
    def build(self, model: nn.Module):
        raise NotImplementedError

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor, index: Tensor) -> Tensor:
        torch.manual_seed(self.budget.seed * 1_000_003 + int(index[0]))  # per batch: its first example's position
        attack = self.build(model if self.native_eot else with_eot(model, self.budget.eot))
        attack.set_model_training_mode(model_training=False)  # never flip the model into train mode
        return attack(x, y)


def dlr_loss(logits: Tensor, y: Tensor) -> Tensor:
    """Croce & Hein's difference-of-logits ratio, summed: the objective APGD-DLR ascends."""
    top = logits.sort(dim=1, descending=True).values
    z_y = logits.gather(1, y[:, None])[:, 0]
    other = logits.masked_fill(torch.nn.functional.one_hot(y, logits.shape[1]).bool(), float("-inf")).amax(1)
    return (-(z_y - other) / (top[:, 0] - top[:, 2] + 1e-12)).sum()


@register_attack
class TAPGD(TorchattacksAttack):
    name = "pgd"
    description = "PGD with random start, CE loss (torchattacks.PGD)"
    default_steps = 20
    uses_alpha = True

    def build(self, model):
        import torchattacks

        b = self.budget
        return torchattacks.PGD(model, eps=b.eps, alpha=b.alpha, steps=b.steps, random_start=True)


@register_attack
class TAFGSM(TorchattacksAttack):
    name = "fgsm"
    description = "one signed-gradient step (torchattacks.FGSM)"
    default_steps = 1

    def build(self, model):
        import torchattacks

        return torchattacks.FGSM(model, eps=self.budget.eps)


@register_attack
class TAAPGDCE(TorchattacksAttack):
    name = "apgd-ce"
    description = "Auto-PGD, CE loss (torchattacks.APGD)"
    default_steps = 50
    loss = "ce"
    native_eot = True

    def build(self, model):
        import torchattacks

        b = self.budget
        return torchattacks.APGD(model, norm="Linf", eps=b.eps, steps=b.steps, n_restarts=1, loss=self.loss,
                                 seed=b.seed, eot_iter=b.eot)


@register_attack
class TAAPGDDLR(TAAPGDCE):
    name = "apgd-dlr"
    description = "Auto-PGD, DLR loss (torchattacks.APGD): scale-invariant, robust to softmax-saturated logits"
    loss = "dlr"

    def objective(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        return dlr_loss(model(x), y)


@register_attack
class TACW(TorchattacksAttack):
    name = "cw"
    norm = "L2"
    bounded = False
    description = "Carlini-Wagner L2, c=1, kappa=0 (torchattacks.CW): minimal perturbation, not eps-bounded"
    default_steps = 50

    def build(self, model):
        import torchattacks

        return torchattacks.CW(model, c=1.0, kappa=0.0, steps=self.budget.steps, lr=0.01)


@register_attack
class TASquare(TorchattacksAttack):
    name = "square"
    white_box = False
    gradient_based = False
    description = "Square attack, score-based black-box (torchattacks.Square); EOT-averaged logits with --eot"
    default_steps = 5000
    steps_meaning = "queries"

    def build(self, model):
        import torchattacks

        b = self.budget
        return torchattacks.Square(model, norm="Linf", eps=b.eps, n_queries=b.steps, n_restarts=1, seed=b.seed)
