"""The one PGD loop (L-inf, sign steps, projection) behind pgd-ce, pgd-eq14, pgd-bpda, region-enum and transfer.

Why our own loop beside torchattacks.PGD: it ascends any loss (the paper's Eq. 14, not only CE), averages
gradients over EOT samples for stochastic models, seeds its random start per example (a batch gives the same answer
as its points one by one), and stops working on a point once it is misclassified with a safety margin
(time-to-result). With ``early_stop=False``, ``keep="last"`` and the same start it performs exactly
torchattacks.PGD's update (tested).

What it returns, per example: the *best* iterate it visited (``keep="best"``, the default), not the last one. An
iterate is scored on the model as deployed (``judge``, by default the logits the loss already computed) by the
share of EOT draws it fools, then by its mean logit margin max_{j != y} z_j - z_y; so a run without early stop
(pgd-eq14, transfer, every EOT run) can never end on an iterate worse than one it already held.

Early stop waits for a margin: a point stops only once it is misclassified by more than
``stop_margin * (max logit - min logit)`` (at least ``STOP_MARGIN_FLOOR``), so the harness's separate, TF32-free
judgement cannot flip it back across the boundary (a point stopped at margin 0.01 can).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robust_uatt.attacks.base import Attack, Rule, attack_mode, has_top_down, per_example_uniform, register_attack
from robust_uatt.evaluation.judging import correct_votes
from robust_uatt.models.outputs import margin, position_margins

LossFn = Callable[[nn.Module, Tensor, Tensor], tuple[Tensor, Tensor]]  # (model, x, y) -> (loss sum, logits)
Judge = Callable[[Tensor], Tensor]  # x -> logits of the model as deployed (one draw)

STOP_MARGIN = 0.02  # early stop once the margin exceeds 2% of the example's logit range ...
STOP_MARGIN_FLOOR = 1e-3  # ... and at least this much (logits in float32 carry ~1e-6 relative rounding)


def logit_margin(logits: Tensor, y: Tensor) -> Tensor:
    """max_{j != y} z_j - z_y per example (N,): positive iff misclassified (for a sequence model: the largest margin
    over the label positions that count, see ``models.outputs.margin``)."""
    return margin(logits, y)


def stop_threshold(logits: Tensor, stop_margin: float) -> Tensor:
    """The margin (N,) an early-stopped point must exceed: relative to its logit range, with a floor."""
    spread = (logits.amax(1) - logits.amin(1)).abs()
    if spread.dim() == 2:  # sequence logits (N, K, S): the widest position sets the scale
        spread = spread.amax(1)
    return (stop_margin * spread).clamp_min(STOP_MARGIN_FLOOR)


LOSSES: dict[str, LossFn] = {}  # the ``loss`` option of pgd-ce, pgd-bpda and region-enum


def register_loss(name: str) -> Callable[[LossFn], LossFn]:
    def add(fn: LossFn) -> LossFn:
        LOSSES[name] = fn
        return fn
    return add


@register_loss("ce")
def ce_loss(model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Cross-entropy on the final logits: saturates (zero gradient) once softmax rounds to one-hot."""
    logits = model(x)
    return F.cross_entropy(logits, y, reduction="sum"), logits


@register_loss("cw")
def cw_loss(model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """The Carlini-Wagner margin max_{j != y} z_j - z_y (no softmax, so no saturation; unclamped: it keeps
    climbing past the boundary)."""
    logits = model(x)
    return logit_margin(logits, y).sum(), logits


@register_loss("dlr")
def dlr_loss(model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Croce & Hein's difference of logits ratio: the margin over (z_pi1 - z_pi3), invariant to the logits' scale
    and shift (z_pi3: the third largest logit; the smallest with fewer than 3 classes)."""
    logits = model(x)
    ranked = logits.sort(1).values
    spread = ranked[:, -1] - ranked[:, max(0, logits.shape[1] - 3)]
    if logits.dim() == 3:  # sequences: the ratio per position, the largest over the positions that count
        return (position_margins(logits, y) / (spread + 1e-12)).amax(1).sum(), logits
    return (logit_margin(logits, y) / (spread + 1e-12)).sum(), logits


def objective_loss(model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """The paper's attack loss: the model's own training objective (``UATT.objective``: Eq. 14 + Q loss); plain CE
    for models without one."""
    objective = getattr(model, "objective", None)
    if objective is None:
        return ce_loss(model, x, y)
    loss, _, logits = objective(x, y)
    return loss * x.shape[0], logits  # batch mean -> sum: the gradient sign per example is unchanged


def pgd(model: nn.Module, x: Tensor, y: Tensor, *, eps: float, alpha: float, steps: int, loss_fn: LossFn = ce_loss,
        init: Tensor | None = None, eot: int = 1, early_stop: bool = True, judge: Judge | None = None,
        stop_margin: float = STOP_MARGIN, keep: str = "best") -> Tensor:
    """L-inf PGD from ``x + init`` (or x); adversarial examples (N, ...) in the eps-ball and [0, 1].

    Args:
        loss_fn: the objective ascended, ``(model, x, y) -> (loss summed over the batch, logits)``.
        eot: gradient samples averaged per step (stochastic models); iterates are scored over as many draws.
        early_stop: stop spending on a point once it is misclassified with margin (only when ``eot == 1``).
        judge: logits of the model as deployed, when the loss runs on another one (a forced top-down region, a
            transfer source); None: the logits ``loss_fn`` returns.
        stop_margin: the early-stop margin, as a fraction of the example's logit range (see ``stop_threshold``).
        keep: "best" (the best iterate per example, see the module docstring) or "last".
    """
    adv = (x + init).clamp(0, 1) if init is not None else x.clone()
    best = adv.clone()
    best_share = torch.full((len(x),), -1.0, device=x.device)  # share of EOT draws the kept iterate fools
    best_margin = torch.full((len(x),), float("-inf"), device=x.device)
    active = torch.arange(len(x), device=x.device)
    for step in range(steps + 1):  # the extra round only scores the final iterate
        xa = adv[active].detach().requires_grad_(step < steps)
        ya = y[active]
        if step < steps or judge is None:  # the final round needs the loss's logits only without a judge
            grad, draws = _gradient_and_logits(model, xa, ya, loss_fn, eot, want_grad=step < steps)
        if judge is not None:
            with torch.no_grad():
                draws = [judge(xa.detach()) for _ in range(eot)]
        margins = torch.stack([logit_margin(z.detach().float(), ya) for z in draws])  # (eot, A)
        share, mean_margin = (margins > 0).float().mean(0), margins.mean(0)
        better = (share > best_share[active]) | ((share == best_share[active]) & (mean_margin > best_margin[active]))
        rows = active[better]
        best[rows], best_share[rows], best_margin[rows] = xa.detach()[better], share[better], mean_margin[better]
        if step == steps:
            break
        if early_stop and eot == 1:
            done = margins[0] > stop_threshold(draws[0].detach().float(), stop_margin)
            active, xa, grad = active[~done], xa[~done], grad[~done]
            if len(active) == 0:
                break
        stepped = xa.detach() + alpha * grad.sign()
        adv[active] = (x[active] + (stepped - x[active]).clamp(-eps, eps)).clamp(0, 1)
    return (best if keep == "best" else adv).detach()


def _gradient_and_logits(model: nn.Module, xa: Tensor, ya: Tensor, loss_fn: LossFn, eot: int,
                         want_grad: bool) -> tuple[Tensor, list[Tensor]]:
    """The loss gradient at xa summed over ``eot`` draws, and each draw's logits; no gradient when not wanted."""
    grad = torch.zeros_like(xa)
    draws = []
    with torch.set_grad_enabled(want_grad):
        for _ in range(eot):
            loss, logits = loss_fn(model, xa, ya)
            if want_grad and loss.requires_grad:  # no path to x (grad_path "vgg" without VGG): a zero gradient
                g = torch.autograd.grad(loss, xa, allow_unused=True)[0]
                if g is not None:
                    grad += g
            draws.append(logits.detach())
    return grad, draws


class PGDBase(Attack):
    """Our loop with random start, restarts and EOT; subclasses pick the loss and model switches."""

    default_steps = 30
    sequences = True
    gradient_based = True
    uses_alpha = True
    options = {"restarts": 1, "random_start": True, "early_stop": True, "stop_margin": STOP_MARGIN, "loss": "ce"}
    choices = {"loss": tuple(LOSSES)}
    option_rules = {"restarts": Rule(low=1, high=10_000), "stop_margin": Rule(low=0)}  # restarts 0: no attack

    @property
    def loss_fn(self) -> LossFn:
        return LOSSES[self.opts["loss"]]

    def switches(self) -> dict[str, Any]:
        """Keyword arguments of ``attack_mode`` for this attack (gradient path, BPDA temperature)."""
        return {}

    def objective(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        with attack_mode(model, **self.switches()):
            return self.loss_fn(model, x, y)[0]

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor, index: Tensor) -> Tensor:
        with attack_mode(model, **self.switches()):
            return self.restarts(model, x, y, index)

    def restarts(self, model: nn.Module, x: Tensor, y: Tensor, index: Tensor, judge: Judge | None = None,
                 loss_fn: LossFn | None = None) -> Tensor:
        """Each restart on the points no earlier restart broke (judged on ``judge``, else the model as switched),
        ascending ``loss_fn`` (default: the attack's loss)."""
        b = self.budget
        best = x.clone()
        undone = torch.ones(len(x), dtype=torch.bool, device=x.device)
        for restart in range(int(self.opts["restarts"])):
            idx = torch.nonzero(undone).flatten()
            if len(idx) == 0:
                break
            init = (per_example_uniform(x[idx], index[idx.cpu()], b.eps, b.seed, salt=restart)
                    if self.opts["random_start"] else None)
            adv = pgd(model, x[idx], y[idx], eps=b.eps, alpha=b.alpha, steps=b.steps, loss_fn=loss_fn or self.loss_fn,
                      init=init, eot=b.eot, early_stop=bool(self.opts["early_stop"]), judge=judge,
                      stop_margin=float(self.opts["stop_margin"]))
            best[idx] = adv
            undone[idx] = 2 * correct_votes(judge or model, adv, y[idx], b.eot) > b.eot
        return best


@register_attack
class PGDCE(PGDBase):
    name = "pgd-ce"
    description = ("our PGD on the final logits (loss ce, or the margins cw / dlr), per-example seeded start, early "
                   "stop, EOT for stochastic models")


@register_attack
class PGDEq14(PGDBase):
    name = "pgd-eq14"
    description = ("the paper's protocol: PGD ascending the training loss Eq. 14 (+ Q loss); grad_path 'vgg' "
                   "(paper: gradient through the VGG features only) or 'full'")
    options = {**{k: v for k, v in PGDBase.options.items() if k != "loss"}, "grad_path": "vgg", "early_stop": False}
    choices = {"grad_path": ("vgg", "full")}
    loss_fn = staticmethod(objective_loss)  # type: ignore[assignment]

    def switches(self) -> dict[str, Any]:
        return {"grad_path": self.opts["grad_path"]}

    def prepare(self, model: nn.Module) -> None:
        """grad_path 'vgg' needs a VGG backbone; without one (every MNIST model) the loss has no path to the input
        and the attack would silently report its random start: use the full path and record it."""
        if self.opts["grad_path"] != "vgg" or _has_vgg(model):
            return
        self.opts["grad_path"] = "full"
        self.notes.append("grad_path 'vgg' asked for, but the model has no VGG backbone: the full gradient path ran")


def _has_vgg(model: nn.Module) -> bool:
    from robust_uatt.models.vgg import VGG16

    return isinstance(model, VGG16) or isinstance(getattr(model, "backbone", None), VGG16)


@register_attack
class PGDBPDA(PGDBase):
    name = "pgd-bpda"
    description = "PGD-CE through the whole model with BPDA: the top-down argmax relaxed to softmax(Q/tau) backward"
    options = {**PGDBase.options, "tau": 0.1}
    option_rules = {**PGDBase.option_rules, "tau": Rule(above=0)}

    def switches(self) -> dict[str, Any]:
        return {"bpda_tau": float(self.opts["tau"]), "grad_path": "full"}


@register_attack
class RegionEnum(PGDBase):
    name = "region-enum"
    description = "PGD-CE with each of the 4 top-down choices forced; a point counts as broken if any candidate " \
                  "fools the unmodified model"

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor, index: Tensor) -> Tensor:
        """The gradient comes from the forced model (only the loss runs with the region forced); every iterate,
        early stop and restart is judged on the model as deployed (its own region choice), so a point is kept only
        for what fools the real model."""
        if not has_top_down(model):
            return super().perturb(model, x, y, index)
        best = x.clone()
        undone = torch.ones(len(x), dtype=torch.bool, device=x.device)
        for action in range(4):
            idx = torch.nonzero(undone).flatten()
            if len(idx) == 0:
                break
            adv = self.restarts(model, x[idx], y[idx], index[idx.cpu()], judge=model,
                                loss_fn=_forced(self.loss_fn, action))
            best[idx] = adv
            undone[idx] = 2 * correct_votes(model, adv, y[idx], self.budget.eot) > self.budget.eot
        return best


def _forced(loss_fn: LossFn, action: int) -> LossFn:
    """``loss_fn`` evaluated with the top-down region forced to ``action`` (restored before the backward pass,
    which only replays the recorded graph)."""
    def loss(model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        with attack_mode(model, forced_action=action):
            return loss_fn(model, x, y)
    return loss
