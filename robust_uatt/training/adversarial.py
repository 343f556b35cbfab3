"""Adversarial training: the inner attack and loss of one training step, and the catastrophic-overfitting guard.

Kinds (L-inf; eps and the step alpha in pixel units of [0, 1] images; see ``AdvConfig``):

- ``fgsm-rs`` (Wong, Rice & Kolter 2020, "Fast is better than free"): delta ~ U[-eps, eps]^d, one signed gradient
  step of alpha = 1.25 eps, projected onto the eps-ball and the [0, 1] box; the model trains on x + delta.
- ``pgd`` (Madry et al. 2018): the same random start, then ``steps`` signed steps of alpha, each projected; the
  model trains on the result.
- ``trades`` (Zhang et al. 2019): from x + 0.001 N(0, I), ``steps`` signed steps ascending KL(p(x) || p(x')); the
  loss is the clean loss + beta KL(p(x) || p(x_adv)).

How the attack sees the model: as the training step that follows it sees it, in train mode (batch statistics;
the attention model samples its locations and its top-down region as in training), with the running statistics
of batch normalization frozen during the attack's passes, so that only the training pass moves them. Gradients are
taken w.r.t. the input only (the parameters get none from the attack). The attention model is attacked through
``attack_mode(grad_path="full")``: d loss / d x flows through the VGG features and through the glimpse sensor's
bilinear sampling of x (the top-down argmax and the sampled locations carry none), and the loss the attack ascends
is the model's training objective (``UATT.objective``: Eq. 14 + the Q loss). Which terms see adversarial inputs is
``ADVERSARIAL_TERMS`` (recorded in the model card).

Reproducible: the random starts come from the run's data generator, the attention model's sampled locations from
the global generator; the checkpoint holds both, so a resumed run replays every attack exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robust_uatt.attacks.base import attack_mode
from robust_uatt.attacks.registry import build_attack
from robust_uatt.data.datasets import Split, dataset_shape, to_float
from robust_uatt.models.outputs import correct, decide
from robust_uatt.training.config import AdvSettings, adv_settings
from robust_uatt.training.objective import count_correct, model_loss
from robust_uatt.utils.errors import UserError
from robust_uatt.utils.files import load_state_into, load_tensors, save_tensors

BEST = "best.safetensors"  # the weights of the epoch with the best validation PGD accuracy so far

ADVERSARIAL_TERMS = {
    "fgsm-rs": {"adversarial inputs": "every term of the training loss: cross-entropy; for the attention model "
                                      "every Eq. 14 term (classification, context, REINFORCE, baseline) and the "
                                      "top-down Q loss, all from one rollout on x + delta",
                "clean inputs": "none"},
    "trades": {"adversarial inputs": "the KL term beta KL(p(x) || p(x_adv)) (final-step logits for the attention "
                                     "model)",
               "clean inputs": "the clean loss: cross-entropy; for the attention model every Eq. 14 term and the Q "
                               "loss"},
}
ADVERSARIAL_TERMS["pgd"] = ADVERSARIAL_TERMS["fgsm-rs"]


# --------------------------------------------------------------------------------------------------- the attack
@contextmanager
def frozen_norm_stats(model: nn.Module) -> Iterator[None]:
    """Batch norm keeps using batch statistics (train mode) but its running averages do not move; restored on exit."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    saved = [(m.momentum, m.num_batches_tracked.clone() if m.num_batches_tracked is not None else None)
             for m in norms]
    try:
        for m in norms:
            m.momentum = 0.0  # running = (1 - 0) * running + 0 * batch: unchanged
        yield
    finally:
        for m, (momentum, tracked) in zip(norms, saved):
            m.momentum = momentum
            if tracked is not None:
                m.num_batches_tracked.copy_(tracked)


def _project(x: Tensor, x_adv: Tensor, eps: float) -> Tensor:
    """Into the eps-ball around x and the [0, 1] box."""
    return (x + (x_adv - x).clamp(-eps, eps)).clamp(0, 1)


def _ascend(loss_of: Callable[[Tensor], Tensor], x: Tensor, start: Tensor, s: AdvSettings) -> Tensor:
    """``s.steps`` signed gradient steps of ``s.alpha`` on ``loss_of`` from ``start``, each projected."""
    x_adv = start.detach()
    for _ in range(s.steps):
        x_adv.requires_grad_(True)
        (grad,) = torch.autograd.grad(loss_of(x_adv), x_adv)
        x_adv = _project(x, x_adv.detach() + s.alpha * grad.sign(), s.eps)
    return x_adv.detach()


def _uniform_start(x: Tensor, eps: float, gen: torch.Generator) -> Tensor:
    noise = torch.rand(x.shape, generator=gen).to(x.device, x.dtype) * 2 - 1
    return _project(x, x + eps * noise, eps)


def perturb(model: nn.Module, x: Tensor, y: Tensor, s: AdvSettings, gen: torch.Generator,
            label_smoothing: float = 0.0) -> Tensor:
    """fgsm-rs / pgd: adversarial examples (B, C, H, W) for x in [0, 1], ascending the model's training loss."""
    with attack_mode(model, grad_path="full"), frozen_norm_stats(model):
        return _ascend(lambda xa: model_loss(model, xa, y, label_smoothing)[0], x, _uniform_start(x, s.eps, gen), s)


def perturb_trades(model: nn.Module, x: Tensor, p_clean: Tensor, s: AdvSettings, gen: torch.Generator) -> Tensor:
    """TRADES: ascend KL(p(x) || p(x')) from x + 0.001 N(0, I); ``p_clean`` = softmax of the clean logits."""

    def kl(xa: Tensor) -> Tensor:
        return F.kl_div(F.log_softmax(model(xa).float(), 1), p_clean, reduction="sum")

    start = x + 0.001 * torch.randn(x.shape, generator=gen).to(x.device, x.dtype)
    with attack_mode(model, grad_path="full"), frozen_norm_stats(model):
        return _ascend(kl, x, _project(x, start, s.eps), s)


def adversarial_loss(model: nn.Module, x: Tensor, y: Tensor, s: AdvSettings, gen: torch.Generator,
                     label_smoothing: float = 0.0) -> tuple[Tensor, dict[str, float], float]:
    """The loss of one adversarial training step: (loss with graph, loss terms, how many of the batch the model
    classified right *on the adversarial inputs*). x (B, C, H, W) in [0, 1], y (B,); ``gen``: the run's data
    generator (random starts)."""
    if s.kind == "trades":
        loss, terms, logits = model_loss(model, x, y, label_smoothing)
        p_clean = F.softmax(logits.detach().float(), 1)
        x_adv = perturb_trades(model, x, p_clean, s, gen)
        logits_adv = model(x_adv)
        kl = F.kl_div(F.log_softmax(logits_adv.float(), 1), F.softmax(logits.float(), 1), reduction="batchmean")
        loss = loss + s.beta * kl
        terms = {**terms, "loss_trades_kl": kl.detach()}
        return loss, {k: float(v) for k, v in terms.items()}, count_correct(logits_adv, y)
    x_adv = perturb(model, x, y, s, gen, label_smoothing)
    loss, terms, logits = model_loss(model, x_adv, y, label_smoothing)
    return loss, {k: float(v) for k, v in terms.items()}, count_correct(logits, y)


def settings_for(recipe: Any, model: nn.Module) -> AdvSettings | None:
    """The recipe's adversarial settings (None for clean training), checked before a run writes anything: valid
    numbers, a hold-out for the guard (never the test split) and a model whose loss reaches its input."""
    if not recipe.adv:
        return None
    s = adv_settings(recipe.adv, recipe.source or recipe.name)
    if not recipe.data["holdout"]:
        raise UserError(f"{recipe.source or recipe.name}: adversarial training validates its overfitting guard on a "
                        "hold-out of the training split, never the test split: set [data] holdout > 0")
    check_differentiable(model, dataset_shape(recipe.dataset, recipe.data))
    return s


def check_differentiable(model: nn.Module, in_shape: tuple[int, int, int]) -> None:
    """UserError unless the training loss has a non-zero gradient w.r.t. the input (probe: two random images)."""
    x = torch.rand(2, *in_shape, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    model.eval()
    try:
        with attack_mode(model, grad_path="full"):
            with torch.no_grad():
                y = decide(model(x))  # labels of the model's own output shape (classes or sequences)
            loss = model_loss(model, x, y)[0]
            grad = torch.autograd.grad(loss, x, allow_unused=True)[0] if loss.requires_grad else None
    except (RuntimeError, ValueError):
        grad = None
    if grad is None or not bool(torch.isfinite(grad).all()) or not bool(grad.abs().sum() > 0):
        raise UserError(f"--adv needs a model whose loss is differentiable w.r.t. the input; {type(model).__name__} "
                        "gives no gradient to its input")


# --------------------------------------------------------------------------------------------------- the guard
def _correct_in_eval_mode(model: nn.Module, x: Tensor, y: Tensor) -> int:
    mode = model.training
    model.eval()
    try:
        with torch.inference_mode():
            return int(correct(model(x), y).sum())
    finally:
        model.train(mode)


class OverfitGuard:
    """Catastrophic-overfitting guard (fast adversarial training's known failure, Wong et al. 2020, section 5).

    After every epoch: PGD-CE accuracy (``guard_steps`` steps, alpha 2.5 eps/steps, random start) at the training eps
    on a fixed validation batch, the first ``guard_n`` images of the hold-out (never the test split). The weights of
    the best epoch so far are kept in ``best.safetensors``; an epoch whose accuracy falls more than ``guard_drop``
    below the best is a collapse: the run restores the best weights and stops. The best so far is read back from
    metrics.jsonl on resume, so the guard holds no state of its own beyond that file and ``best.safetensors``."""

    def __init__(self, run_dir: Path, s: AdvSettings, val: Split, device: torch.device, batch_size: int,
                 records: list[dict[str, Any]]) -> None:
        self.path, self.s, self.device, self.batch_size = run_dir / BEST, s, device, batch_size
        self.x, self.y = val.x[:s.guard_n], val.y[:s.guard_n]
        scored = [(r["val_pgd_acc"], -r["epoch"]) for r in records if "val_pgd_acc" in r]
        best = max(scored) if scored else None  # ties: the earliest epoch
        self.best_acc, self.best_epoch = (best[0], -best[1]) if best else (float("-inf"), 0)
        self.stopped: dict[str, Any] | None = None

    def measure(self, model: nn.Module) -> float:
        """PGD accuracy on the fixed validation batch (the model is left in the mode it was in)."""
        s = self.s
        attack = build_attack("pgd-ce", eps=s.eps, steps=s.guard_steps, seed=0)
        hits = 0
        for start in range(0, len(self.y), self.batch_size):
            x = to_float(self.x[start:start + self.batch_size].to(self.device))
            y = self.y[start:start + self.batch_size].to(self.device)
            x_adv = attack(model, x, y, index=torch.arange(start, start + len(y)))
            hits += _correct_in_eval_mode(model, x_adv, y)
        return hits / max(1, len(self.y))

    def update(self, record: dict[str, Any], model: nn.Module) -> bool:
        """Measure after the epoch ``record`` describes, annotate the record, keep the best weights; True on a
        collapse (the caller restores and stops)."""
        acc = self.measure(model)
        epoch = record["epoch"]
        record.update(train_adv_acc=record["train_acc"], val_pgd_acc=acc, val_pgd_n=len(self.y))
        if acc > self.best_acc:
            self.best_acc, self.best_epoch = acc, epoch
            save_tensors(self.path, dict(model.state_dict()), {"epoch": epoch, "val_pgd_acc": acc})
        record.update(val_pgd_best=self.best_acc, val_pgd_best_epoch=self.best_epoch)
        if self.best_acc - acc > self.s.guard_drop:
            record["guard"] = "collapse"
            self.stopped = {"epoch": epoch, "val_pgd_acc": acc, "restored_epoch": self.best_epoch,
                            "restored_val_pgd_acc": self.best_acc, "guard_drop": self.s.guard_drop}
            return True
        return False

    def restore(self, model: nn.Module) -> str:
        """Load the best epoch's weights into ``model``; returns what happened, in one sentence."""
        tensors, _ = load_tensors(self.path)
        load_state_into(model, tensors, str(self.path))
        st = self.stopped or {}
        return (f"catastrophic overfitting: PGD accuracy on the validation batch fell from "
                f"{st['restored_val_pgd_acc']:.4f} (epoch {st['restored_epoch']}) to {st['val_pgd_acc']:.4f} "
                f"(epoch {st['epoch']}), more than "
                f"guard_drop {self.s.guard_drop}; restored epoch {st['restored_epoch']}'s weights ({self.path}) and "
                "stopped")

    def card(self) -> dict[str, Any]:
        """The model card's ``adversarial`` section: the resolved recipe, which terms saw adversarial inputs, the
        guard and whether it stopped the run."""
        s = self.s
        return {**asdict(s), "norm": "Linf", "eps_units": "pixel [0,1]",
                "attack_sees": "train mode: batch statistics (running averages frozen during the attack), sampled "
                               "policy and top-down region for the attention model; gradient w.r.t. the input only, "
                               "through every differentiable path (attack_mode grad_path='full')",
                "terms": ADVERSARIAL_TERMS[s.kind],
                "guard": {"attack": f"pgd-ce, {s.guard_steps} steps, alpha 2.5 eps/steps, random start",
                          "batch": f"the first {len(self.y)} hold-out images", "drop": s.guard_drop,
                          "best_val_pgd_acc": self.best_acc, "best_epoch": self.best_epoch},
                "stopped_early": self.stopped}
