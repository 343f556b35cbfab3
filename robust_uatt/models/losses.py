"""The bottom-up objective, Eq. 11-14, in one function (``uatt_loss``); the top-down Q loss lives in ``top_down.py``."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

if TYPE_CHECKING:
    from robust_uatt.models.uatt import Rollout


def uatt_loss(
    rollout: Rollout,
    y: Tensor,
    *,
    beta1: float = 1.0,
    beta2: float = 0.01,
    lam: float = 0.5,
    use_entropy: bool = True,
    use_context: bool = True,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Eq. 14 (+ the baseline's regression): total = CE(alpha_T, y) + beta1 CE(z, y) + beta2 (-J) + MSE(b, R).

    Sign reading. The paper writes "+ beta2 J(theta)", but J (Eq. 12) is an expected return to *maximise*, so the loss
    we *minimise* carries -J. Its REINFORCE surrogate is
        -J ~ -(1/B) sum_b sum_t log pi(L_t) * (entropy(x_t) + lam) * (R - b_{t-1}).detach()
    where L_t (t = 1..T-1) is the location the policy drew from H_{t-1}, x_t the patch it then saw, b_{t-1} the
    baseline from the same H_{t-1} and R = 1[argmax alpha_T = y] (Algorithm 1 line 15). Descending it raises
    log pi of actions whose return beat the baseline. With ``use_entropy=False`` the weight is 1 (plain RAM).

    Eq. 11 (C = sum_t alpha_{t,y} H_t, z = f_c(C)) needs f_c's parameters, so the model computes ``context_logits`` in
    ``rollout(x, y)``; here it only enters the cross-entropy. Terms switched off (context, or REINFORCE/baseline
    under a non-learned location control: ``log_probs is None``) are exact zeros.

    Returns the weighted total and the *unweighted* terms (``cls, context, reinforce, baseline`` with graph;
    ``reward`` detached). Everything stays differentiable w.r.t. the input, so attacks can ascend this loss.
    """
    logits_last = rollout.logits[-1]
    zero = logits_last.new_zeros(())
    loss_cls = F.cross_entropy(logits_last, y)
    reward = (logits_last.argmax(dim=-1) == y).to(logits_last.dtype).detach()

    loss_context = zero
    if use_context and rollout.context_logits is not None:
        loss_context = F.cross_entropy(rollout.context_logits, y)

    loss_reinforce, loss_baseline = zero, zero
    if rollout.log_probs is not None and rollout.baselines is not None and rollout.log_probs.shape[0] > 0:
        advantage = (reward.unsqueeze(0) - rollout.baselines).detach()  # (T-1, B)
        if use_entropy:
            weight = rollout.entropies[1:].detach() + lam
        else:
            weight = torch.ones_like(advantage)
        loss_reinforce = -(rollout.log_probs * weight * advantage).sum(0).mean()
        loss_baseline = F.mse_loss(rollout.baselines, reward.unsqueeze(0).expand_as(rollout.baselines))

    total = loss_cls + beta1 * loss_context + beta2 * loss_reinforce + loss_baseline
    terms = {
        "cls": loss_cls,
        "context": loss_context,
        "reinforce": loss_reinforce,
        "baseline": loss_baseline,
        "reward": reward,
    }
    return total, terms
