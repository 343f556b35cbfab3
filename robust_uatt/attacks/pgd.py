"""The one PGD loop (L-inf, sign steps, projection) behind pgd-ce, pgd-eq14, pgd-bpda, region-enum and transfer.

Why our own loop beside torchattacks.PGD: it ascends any loss (the paper's Eq. 14, not only CE), averages
gradients over EOT samples for stochastic models, seeds its random start per example (a batch gives the same answer
as its points one by one), and stops working on a point as soon as it is misclassified (time-to-result). With
``early_stop=False`` and the same start it performs exactly torchattacks.PGD's update (tested).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robust_uatt.attacks.base import Attack, attack_mode, has_top_down, per_example_uniform, register_attack

LossFn = Callable[[nn.Module, Tensor, Tensor], tuple[Tensor, Tensor]]  # (model, x, y) -> (loss sum, logits)


def ce_loss(model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    logits = model(x)
    return F.cross_entropy(logits, y, reduction="sum"), logits


def objective_loss(model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """The paper's attack loss: the model's own training objective (``UATT.objective``: Eq. 14 + Q loss); plain CE
    for models without one."""
    objective = getattr(model, "objective", None)
    if objective is None:
        return ce_loss(model, x, y)
    loss, _, logits = objective(x, y)
    return loss * x.shape[0], logits  # batch mean -> sum: the gradient sign per example is unchanged


def pgd(model: nn.Module, x: Tensor, y: Tensor, *, eps: float, alpha: float, steps: int, loss_fn: LossFn = ce_loss,
        init: Tensor | None = None, eot: int = 1, early_stop: bool = True) -> Tensor:
    """L-inf PGD from ``x + init`` (or x); returns adversarial examples in the eps-ball and [0, 1]."""
    adv = (x + init).clamp(0, 1) if init is not None else x.clone()
    active = torch.arange(len(x), device=x.device)
    for _ in range(steps):
        xa = adv[active].detach().requires_grad_(True)
        ya = y[active]
        grad = torch.zeros_like(xa)
        fooled = torch.zeros(len(active), dtype=torch.bool, device=x.device)
        for _ in range(eot):
            loss, logits = loss_fn(model, xa, ya)
            if loss.requires_grad:  # no path to x (e.g. grad_path "vgg" on a model without VGG): a zero gradient
                g = torch.autograd.grad(loss, xa, allow_unused=True)[0]
                if g is not None:
                    grad += g
            fooled |= logits.detach().argmax(1) != ya
        if early_stop and eot == 1 and fooled.any():
            # this iterate already fools the model: keep it and stop spending on the point
            keep = ~fooled
            active, xa, grad = active[keep], xa[keep], grad[keep]
            if len(active) == 0:
                break
        stepped = xa.detach() + alpha * grad.sign()
        adv[active] = (x[active] + (stepped - x[active]).clamp(-eps, eps)).clamp(0, 1)
    return adv.detach()


class PGDBase(Attack):
    """Our loop with random start, restarts and EOT; subclasses pick the loss and model switches."""

    default_steps = 30
    options = {"restarts": 1, "random_start": True, "early_stop": True}
    loss_fn: staticmethod = staticmethod(ce_loss)

    def switches(self) -> dict[str, Any]:
        """Keyword arguments of ``attack_mode`` for this attack (gradient path, BPDA temperature)."""
        return {}

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor, index: Tensor) -> Tensor:
        b = self.budget
        best = x.clone()
        undone = torch.ones(len(x), dtype=torch.bool, device=x.device)
        with attack_mode(model, **self.switches()):
            for restart in range(int(self.opts["restarts"])):
                idx = torch.nonzero(undone).flatten()
                if len(idx) == 0:
                    break
                init = (per_example_uniform(x[idx], index[idx.cpu()], b.eps, b.seed, salt=restart)
                        if self.opts["random_start"] else None)
                adv = pgd(model, x[idx], y[idx], eps=b.eps, alpha=b.alpha, steps=b.steps, loss_fn=self.loss_fn,
                          init=init, eot=b.eot, early_stop=bool(self.opts["early_stop"]))
                best[idx] = adv
                with torch.no_grad():
                    undone[idx] = model(adv).argmax(1) == y[idx]
        return best


@register_attack
class PGDCE(PGDBase):
    name = "pgd-ce"
    description = "our PGD on the final logits (CE), per-example seeded start, early stop, EOT for stochastic models"


@register_attack
class PGDEq14(PGDBase):
    name = "pgd-eq14"
    description = ("the paper's protocol: PGD ascending the training loss Eq. 14 (+ Q loss); grad_path 'vgg' "
                   "(paper: gradient through the VGG features only) or 'full'")
    options = {**PGDBase.options, "grad_path": "vgg", "early_stop": False}
    choices = {"grad_path": ("vgg", "full")}
    loss_fn = staticmethod(objective_loss)

    def switches(self) -> dict[str, Any]:
        return {"grad_path": self.opts["grad_path"]}


@register_attack
class PGDBPDA(PGDBase):
    name = "pgd-bpda"
    description = "PGD-CE through the whole model with BPDA: the top-down argmax relaxed to softmax(Q/tau) backward"
    options = {**PGDBase.options, "tau": 0.1}

    def switches(self) -> dict[str, Any]:
        return {"bpda_tau": float(self.opts["tau"]), "grad_path": "full"}


@register_attack
class RegionEnum(PGDBase):
    name = "region-enum"
    description = "PGD-CE with each of the 4 top-down choices forced; a point counts as broken if any candidate " \
                  "fools the unmodified model"

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor, index: Tensor) -> Tensor:
        if not has_top_down(model):
            return super().perturb(model, x, y, index)
        best = x.clone()
        undone = torch.ones(len(x), dtype=torch.bool, device=x.device)
        for action in range(4):
            idx = torch.nonzero(undone).flatten()
            if len(idx) == 0:
                break
            with attack_mode(model, forced_action=action):
                adv = super().perturb(model, x[idx], y[idx], index[idx.cpu()])
            best[idx] = adv
            with torch.no_grad():  # judged on the model as deployed: its own region choice
                undone[idx] = model(adv).argmax(1) == y[idx]
        return best
