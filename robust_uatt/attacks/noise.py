"""Random uniform noise in the eps-ball, many draws per point: a sanity floor. If noise beats the gradient attacks,
the gradients are masked."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from robust_uatt.attacks.base import Attack, per_example_uniform, register_attack
from robust_uatt.evaluation.judging import correct_votes


@register_attack
class UniformNoise(Attack):
    name = "noise"
    white_box = False
    sequences = True
    description = ("uniform noise in the eps-ball; a point is broken if any draw fools the model (with --eot k: "
                   "fools a majority of k passes)")
    default_steps = 100
    steps_meaning = "draws"

    @torch.no_grad()
    def perturb(self, model: nn.Module, x: Tensor, y: Tensor, index: Tensor) -> Tensor:
        best = x.clone()
        undone = torch.ones(len(x), dtype=torch.bool, device=x.device)
        for draw in range(self.budget.steps):
            idx = torch.nonzero(undone).flatten()
            if len(idx) == 0:
                break
            cand = (x[idx] + per_example_uniform(x[idx], index[idx.cpu()], self.budget.eps, self.budget.seed,
                                                 salt=1000 + draw)).clamp(0, 1)
            eot = self.budget.eot  # randomized models: a draw fools only if most of eot passes say so
            fooled = 2 * correct_votes(model, cand, y[idx], eot) <= eot
            best[idx[fooled]] = cand[fooled]
            undone[idx[fooled]] = False
        return best
