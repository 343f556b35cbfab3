"""Bottom-up pieces of the attention model (paper 4.2, Eq. 10b-13; appendix): core, policy, baseline, heads, entropy.

Every recurrent piece is a cell stepped from Python over the (few) glimpses; the batch dimension is never looped.
The LSTM core is built from ``nn.LSTMCell`` on purpose: cuDNN's ``nn.LSTM`` refuses ``backward`` in eval mode, and
the attacks need input gradients of the model in eval mode.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class RNNCore(nn.Module):
    """Appendix core: H_t = ReLU(Linear(H_{t-1}) + Linear(G_t)); H_{-1} = 0 (deterministic, see ``initial_state``)."""

    def __init__(self, input_dim: int, hidden: int) -> None:
        super().__init__()
        self.hidden = hidden
        self.from_input = nn.Linear(input_dim, hidden)
        self.from_hidden = nn.Linear(hidden, hidden)

    def initial_state(self, batch: int, like: Tensor) -> Tensor:
        # Algorithm 1 says "randomly generate H_0"; zeros keep eval deterministic (the attacks need that) and the
        # location/glimpse randomness already supplies the exploration.
        return like.new_zeros(batch, self.hidden)

    def forward(self, g: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        h = F.relu(self.from_hidden(state) + self.from_input(g))
        return h, h


class LSTMCore(nn.Module):
    """Stacked ``nn.LSTMCell`` core (SVHN/DRAM style); H_t is the top layer's hidden state."""

    def __init__(self, input_dim: int, hidden: int, layers: int = 2) -> None:
        super().__init__()
        if layers < 1:
            raise ValueError(f"lstm layers must be >= 1, got {layers}")
        self.hidden = hidden
        self.cells = nn.ModuleList(nn.LSTMCell(input_dim if i == 0 else hidden, hidden) for i in range(layers))

    def initial_state(self, batch: int, like: Tensor) -> list[tuple[Tensor, Tensor]]:
        zero = like.new_zeros(batch, self.hidden)
        return [(zero, zero) for _ in self.cells]

    def forward(self, g: Tensor, state: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, list[tuple[Tensor, Tensor]]]:
        new_state, inp = [], g
        for cell, hc in zip(self.cells, state):
            h, c = cell(inp, hc)
            new_state.append((h, c))
            inp = h
        return inp, new_state


class LocationPolicy(nn.Module):
    """Gaussian location policy (Eq. 10c): mean = tanh(Linear(H_t)), fixed std ``sigma``.

    ``sample=True``: L ~ N(mean, sigma^2), detached (REINFORCE: the gradient reaches the mean only through log pi),
    then clamped to [-1, 1]; log pi is of the unclamped draw, the density the sample really came from.
    ``sample=False``: L = mean, *not* detached, so an attacker in eval mode differentiates through where the model
    looks next; log pi(mean) is then a constant whose gradient is exactly zero.
    """

    def __init__(self, hidden: int, sigma: float = 0.15) -> None:
        super().__init__()
        if sigma <= 0:
            raise ValueError(f"sigma must be > 0, got {sigma}")
        self.sigma = sigma
        self.fc = nn.Linear(hidden, 2)

    def forward(self, h: Tensor, sample: bool) -> tuple[Tensor, Tensor, Tensor]:
        """h (B, hidden) -> (location (B, 2), log_prob (B,), mean (B, 2))."""
        mean = torch.tanh(self.fc(h))
        if sample:
            raw = (mean + self.sigma * torch.randn_like(mean)).detach()
        else:
            raw = mean
        log_prob = gaussian_log_prob(raw, mean, self.sigma)
        return raw.clamp(-1.0, 1.0), log_prob, mean


def gaussian_log_prob(value: Tensor, mean: Tensor, sigma: float) -> Tensor:
    """log N(value; mean, sigma^2 I) summed over the last dim (the two coordinates)."""
    z = (value - mean) / sigma
    return (-0.5 * z.pow(2) - math.log(sigma) - 0.5 * math.log(2 * math.pi)).sum(-1)


class Baseline(nn.Module):
    """b_t = Linear(H_t), fitted to the reward R by MSE.

    H_t is detached on the way in: the baseline is a variance reducer, not a training signal, so its MSE must not
    reshape the core's representation (RAM's reference code does the same).
    """

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.fc = nn.Linear(hidden, 1)

    def forward(self, h: Tensor) -> Tensor:
        return self.fc(h.detach()).squeeze(-1)


class ContextHead(nn.Module):
    """f_c of Eq. 11: FC + ReLU + FC -> logits z over the K classes (softmax lives in the cross-entropy)."""

    def __init__(self, hidden: int, num_classes: int, width: int | None = None) -> None:
        super().__init__()
        width = width or hidden
        self.net = nn.Sequential(nn.Linear(hidden, width), nn.ReLU(), nn.Linear(width, num_classes))

    def forward(self, context: Tensor) -> Tensor:
        return self.net(context)


def context_vector(logits: Tensor, hidden: Tensor, y: Tensor) -> Tensor:
    """Eq. 11: C = sum_t alpha_{t,y} H_t with alpha_t = softmax(logits_t); logits (T,B,K), hidden (T,B,D) -> (B,D)."""
    alpha_y = F.softmax(logits, dim=-1).gather(-1, y.view(1, -1, 1).expand(logits.shape[0], -1, 1))  # (T, B, 1)
    return (alpha_y * hidden).sum(0)


def patch_entropy(patch: Tensor, threshold: float = 0.5) -> Tensor:
    """Binary entropy in bits of a patch binarized at ``threshold`` (Eq. 12's entropy(x_t)); (B, C, g, g) -> (B,).

    Grayscale is the channel mean. The threshold is a fixed 0.5 in [0, 1] pixel units rather than the patch's own
    mean: the paper wants to "skip all black or white regions", and with a self-referential threshold a flat patch
    plus a little noise (or an adversarial perturbation) would score a full bit. With 0.5, flat dark or bright regions
    score 0 and regions crossed by an edge score up to 1 bit. Not differentiable (it is a weight, computed detached).
    """
    with torch.no_grad():
        gray = patch.mean(dim=1)
        p = (gray > threshold).float().flatten(1).mean(dim=1)
        q = 1.0 - p
        return -(torch.xlogy(p, p) + torch.xlogy(q, q)) / math.log(2.0)
