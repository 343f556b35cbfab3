"""Sequence recognition (paper section 5, "Sequential multi-digit recognition", Table 3; appendix "SVHN network").

The attention model reads a house number as DRAM does (Ba et al. 2015): it takes ``glimpses_per_label`` glimpses (3)
per output label and emits one label after each group, for ``positions`` labels: the digits left to right, then a
terminal label. With up to 5 digits that is 6 labels x 3 glimpses = the paper's 18 glimpses. Every label position
is always computed (a batch cannot stop early); reading the prediction stops at the first terminal
(``models.outputs.decide``), which is the paper's "runs until it predicts a terminal label".

Pieces, all reused from the single-label model: the glimpse sensor (12x12 at 2 scales), the appendix's SVHN glimpse
network (``GlimpseNetwork(kind="conv")``: 5x5, 3x3, 3x3 convolutions with 64, 64, 128 filters), a 2-layer LSTM core
of 512 units, the Gaussian location policy and its baseline, the top-down Q-learner for the first location, the
entropy weight (Eq. 12-13) and the context head (Eq. 11).

Objective (Eq. 14 for sequences; ``SequenceUATT.objective``):
    total = CE(labels) + beta1 CE_context + beta2 (-J) + MSE(b, R) + Q loss
- CE(labels): cross-entropy of every label position that counts (the digits and the terminal; ``IGNORE`` after it),
  summed over positions and averaged over the batch: the negative log-likelihood of the whole sequence.
- Context (Eq. 11) per position s: C_s = sum over the glimpses t of group s of w_t H_t, with w_t = alpha_{t, y_s}
  normalized to sum to one over the group and detached (see ``_context_logits``: the raw weights leak the label),
  z_s = f_c(C_s), and CE(z_s, y_s) counted like the labels. (The single-label model sums over all T glimpses for its
  one label; here each label has its own group of glimpses.)
- REINFORCE (Eq. 12-13) with R = 1 iff the *whole sequence* is right (Algorithm 1, line 16), the same R for the
  baseline regression and the top-down Q-learner's reward.

Outputs: ``forward`` returns logits (B, K, S) with K = 11 (digits + terminal, the last class) and S = ``positions``
-- the class axis second, so ``F.cross_entropy(logits, y)`` and ``logits.argmax(1)`` work as for classifiers.

``SequenceCNN`` is the convolutional baseline for the same labels: a small conv net with one linear head per
position (Goodfellow et al. 2014 use one softmax per digit plus one for the length; a terminal class does both).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from dataclasses import MISSING, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robust_uatt.models.bottom_up import Baseline, ContextHead, LocationPolicy, LSTMCore, patch_entropy
from robust_uatt.models.glimpse import GlimpseNetwork, GlimpseSensor
from robust_uatt.models.outputs import IGNORE, correct
from robust_uatt.models.registry import register_model
from robust_uatt.models.top_down import TopDown, TopDownChoice
from robust_uatt.models.uatt import POLICIES, STAT_KEYS, AttentionControls, _check_choice, _choice
from robust_uatt.models.vgg import Normalize


@dataclass
class SequenceUATTConfig:
    """Every option of the sequence attention model; a recipe's ``[model]`` table sets any of them by name.

    ``num_classes`` (digits + terminal), ``in_channels``, ``image_size`` and ``positions`` (labels per image:
    max_digits + 1) come from the dataset. Glimpses: ``glimpses_per_label`` (3: T = positions x 3), ``patch`` (12),
    ``scales`` (2), ``scale_factor``, ``max_supersample``. Glimpse net (appendix, SVHN): ``conv_channels`` (64, 64,
    128), ``glimpse_dim``, ``glimpse_norm``. Core: ``hidden`` (512) x ``lstm_layers`` (2). Policy: ``sigma``, eval
    ``policy`` "mean" | "sample". Top-down start: ``top_down`` and the ``td_*`` options; without it, RAM/DRAM's start
    (uniform in train, the centre in deterministic eval). Constraints: ``entropy`` (weight entropy(x_t) + ``lam``),
    ``entropy_threshold``, ``context`` (width ``context_hidden``), ``beta1``, ``beta2``. ``mean``/``std``: input
    standardization inside the model.
    """

    num_classes: int
    in_channels: int
    image_size: int
    positions: int = 6
    glimpses_per_label: int = 3
    patch: int = 12
    scales: int = 2
    scale_factor: float = 2.0
    max_supersample: int = 8
    conv_channels: Sequence[int] = (64, 64, 128)
    glimpse_dim: int = 512
    glimpse_norm: str = _choice("group", "batch")
    hidden: int = 512
    lstm_layers: int = 2
    sigma: float = 0.15
    policy: str = _choice(*POLICIES)
    top_down: bool = True
    levels: int = 2
    td_feat_dim: int = 64
    td_exploration: str = _choice("epsilon", "softmax")
    td_epsilon: float = 0.1
    td_target_sync: int = 100
    entropy: bool = True
    entropy_threshold: float = 0.5
    context: bool = True
    context_hidden: int = 256
    lam: float = 0.5
    beta1: float = 1.0
    beta2: float = 0.01
    mean: Sequence[float] | None = None
    std: Sequence[float] | None = None

    def __post_init__(self) -> None:
        for f in fields(self):
            if "choices" in f.metadata:
                _check_choice(f.name, getattr(self, f.name), f.metadata["choices"])
        if min(self.positions, self.glimpses_per_label, self.patch, self.scales, self.hidden, self.glimpse_dim) < 1:
            raise ValueError("positions, glimpses_per_label, patch, scales, hidden and glimpse_dim must be >= 1")
        if self.num_classes < 2:
            raise ValueError(f"a sequence model needs the digit classes and a terminal class, got {self.num_classes}")
        if len(tuple(self.conv_channels)) != 3:
            raise ValueError(f"conv_channels needs 3 entries (one per conv layer), got {list(self.conv_channels)}")
        if (self.mean is None) != (self.std is None) or (
                self.mean is not None and not len(self.mean) == len(self.std) == self.in_channels):
            raise ValueError(f"mean and std must both be given with {self.in_channels} entries each, or both omitted")


@dataclass
class SequenceRollout:
    """One pass over T = positions x glimpses_per_label glimpses."""

    step_logits: Tensor  # (T, B, K) f_y(H_t) at every glimpse
    hidden: Tensor  # (T, B, D)
    locations: Tensor  # (T, B, 2)
    entropies: Tensor  # (T, B) bits of the finest patch (detached)
    logits: Tensor  # (B, K, S) the label emitted after each group of glimpses
    log_probs: Tensor  # (T-1, B) log pi(L_t), t = 1..T-1
    baselines: Tensor  # (T-1, B)
    context_logits: Tensor | None = None  # (B, K, S) z_s of Eq. 11, with y and context=True
    top_down: TopDownChoice | None = None


def reinforce_terms(log_probs: Tensor, baselines: Tensor, entropies: Tensor, reward: Tensor, *, lam: float,
                    use_entropy: bool) -> tuple[Tensor, Tensor]:
    """Eq. 12-13's REINFORCE surrogate -J and the baseline's MSE, as in the single-label model's Eq. 14.

    -J = -(1/B) sum_b sum_t log pi(L_t) (entropy(x_t) + lam) (R - b_{t-1}).detach(); weight 1 without entropy.
    """
    if log_probs.shape[0] == 0:
        zero = reward.new_zeros(())
        return zero, zero
    advantage = (reward.unsqueeze(0) - baselines).detach()
    weight = entropies[1:].detach() + lam if use_entropy else torch.ones_like(advantage)
    loss = -(log_probs * weight * advantage).sum(0).mean()
    return loss, F.mse_loss(baselines, reward.unsqueeze(0).expand_as(baselines))


class SequenceUATT(AttentionControls, nn.Module):
    """The unified attention model reading digit sequences; see the module docstring."""

    def __init__(self, config: SequenceUATTConfig) -> None:
        super().__init__()
        c = self.config = config
        self.num_classes, self.positions, self.per_label = c.num_classes, c.positions, c.glimpses_per_label
        self.glimpses = c.positions * c.glimpses_per_label
        self.use_entropy, self.use_context = c.entropy, c.context
        self.lam, self.beta1, self.beta2 = c.lam, c.beta1, c.beta2
        self._policy = c.policy
        self.grad_path = "full"  # attack-time switches, set through ``attack_mode`` only
        self.bpda_tau: float | None = None
        mean = tuple(c.mean) if c.mean is not None else None
        std = tuple(c.std) if c.std is not None else None
        self.sensor = GlimpseSensor(c.patch, c.scales, c.scale_factor, c.max_supersample)
        self.glimpse_net = GlimpseNetwork(c.in_channels, c.patch, c.scales, kind="conv", out_dim=c.glimpse_dim,
                                          conv_channels=tuple(c.conv_channels), norm=c.glimpse_norm, mean=mean,
                                          std=std)
        self.core = LSTMCore(c.glimpse_dim, c.hidden, c.lstm_layers)
        self.classifier = nn.Linear(c.hidden, c.num_classes)
        self.context_head = ContextHead(c.hidden, c.num_classes, c.context_hidden) if c.context else None
        self.location_policy = LocationPolicy(c.hidden, c.sigma)
        self.baseline = Baseline(c.hidden)
        self.top_down: TopDown | None = None
        if c.top_down:
            self.top_down = TopDown(c.in_channels, c.image_size, levels=c.levels, feat_dim=c.td_feat_dim,
                                    exploration=c.td_exploration, epsilon=c.td_epsilon,
                                    target_sync=c.td_target_sync)

    def _initial_location(self, x: Tensor, choice: TopDownChoice | None) -> Tensor:
        if choice is not None:
            l0 = choice.l0.to(x.dtype)
            if self.bpda_tau is not None and self.top_down is not None:
                soft = self.top_down.soft_l0(x, self.bpda_tau)
                l0 = l0 + (soft - soft.detach())  # forward: the chosen region's centre; backward: the soft centre
            return l0
        if self.stochastic:
            return torch.rand(x.shape[0], 2, dtype=x.dtype, device=x.device) * 2 - 1
        return x.new_zeros(x.shape[0], 2)

    # ------------------------------------------------------------------------------------------------ rollout
    def rollout(self, x: Tensor, y: Tensor | None = None) -> SequenceRollout:
        """All T glimpses on x (B, C, H, W) in [0, 1]; with ``y`` (B, S) also the context logits of Eq. 11.
        Goes through ``__call__`` so forward hooks (pass counting) see it."""
        return self(x, y, full=True)

    def forward(self, x: Tensor, y: Tensor | None = None, *, full: bool = False) -> Tensor | SequenceRollout:
        """Logits (B, K, S) (no softmax); ``full=True``: the whole :class:`SequenceRollout`."""
        r = self._rollout(x, y)
        return r if full else r.logits

    def _rollout(self, x: Tensor, y: Tensor | None) -> SequenceRollout:
        if self.grad_path == "vgg":  # the paper's attack path runs through VGG features, which this model lacks
            x = x.detach()
        choice = self.top_down.select(x) if self.top_down is not None else None
        loc = self._initial_location(x, choice)
        state = self.core.initial_state(x.shape[0], x)
        logits, hidden, locations, entropies, log_probs, baselines = [], [], [], [], [], []
        for t in range(self.glimpses):
            patches = self.sensor(x, loc)
            entropies.append(patch_entropy(patches[:, 0], self.config.entropy_threshold))
            h, state = self.core(self.glimpse_net(patches, loc), state)
            logits.append(self.classifier(h))
            hidden.append(h)
            locations.append(loc)
            if t < self.glimpses - 1:
                loc, log_prob, _ = self.location_policy(h, self.stochastic)
                loc = loc.to(x.dtype)
                log_probs.append(log_prob)
                baselines.append(self.baseline(h))
        step_logits = torch.stack(logits)
        empty = x.new_zeros(0, x.shape[0])
        out = SequenceRollout(
            step_logits=step_logits, hidden=torch.stack(hidden), locations=torch.stack(locations),
            entropies=torch.stack(entropies), logits=step_logits[self.per_label - 1::self.per_label].permute(1, 2, 0),
            log_probs=torch.stack(log_probs) if log_probs else empty,
            baselines=torch.stack(baselines) if baselines else empty, top_down=choice,
        )  # fmt: skip
        if y is not None and self.context_head is not None:
            out.context_logits = self._context_logits(out, y)
        return out

    def _context_logits(self, r: SequenceRollout, y: Tensor) -> Tensor:
        """Eq. 11 per label position: z_s = f_c(sum_{t in group s} w_t H_t) -> (B, K, S), where the weights
        w_t = alpha_{t, y_s} / sum_{t' in group s} alpha_{t', y_s} sum to one (the paper: "the weight alpha_t (which
        sums to one)") and are detached.

        Why both: C = alpha_{t,y} H_t with raw weights carries the label in its *scale* (alpha_{t,y} is a known
        function of H_t and y), so f_c can read y back from |C| / |H_t|, and the gradient through alpha pushes the
        classifier towards label-coded probabilities instead of correct ones. On the 2-digit toy problem of
        tests/test_sequence.py the raw form drove the context loss to 0.5 while the digit loss stayed at chance;
        normalized, detached weights remove the scale channel (a single glimpse per label gets w = 1: C = H_t).
        """
        t, b, k = r.step_logits.shape
        s, g = self.positions, self.per_label
        alpha = F.softmax(r.step_logits.detach(), dim=-1).view(s, g, b, k)
        target = y.clamp(min=0).t().reshape(s, 1, b, 1).expand(s, g, b, 1)  # IGNORE positions: any class (unused)
        weight = alpha.gather(-1, target)
        weight = weight / weight.sum(1, keepdim=True).clamp_min(1e-12)
        context = (weight * r.hidden.view(s, g, b, -1)).sum(1)  # (S, B, D)
        return self.context_head(context).permute(1, 2, 0)

    # ------------------------------------------------------------------------------------------------ objective
    def objective(self, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor], Tensor]:
        """Eq. 14 for sequences (module docstring) + the Q loss; (total, detached terms by ``STAT_KEYS``, logits)."""
        if y.dim() != 2 or y.shape[1] != self.positions:
            raise ValueError(f"labels must be (B, {self.positions}) sequences, got {tuple(y.shape)}")
        r = self.rollout(x, y)
        batch = x.shape[0]
        loss_cls = F.cross_entropy(r.logits, y, ignore_index=IGNORE, reduction="sum") / batch
        reward = correct(r.logits.detach(), y).to(r.logits.dtype)
        zero = loss_cls.new_zeros(())
        loss_context = zero
        if self.use_context and r.context_logits is not None:
            loss_context = F.cross_entropy(r.context_logits, y, ignore_index=IGNORE, reduction="sum") / batch
        loss_reinforce, loss_baseline = reinforce_terms(r.log_probs, r.baselines, r.entropies, reward, lam=self.lam,
                                                        use_entropy=self.use_entropy)
        loss_q = zero
        if self.top_down is not None and r.top_down is not None:
            loss_q = self.top_down.q_loss(r.top_down, reward)
        total = loss_cls + self.beta1 * loss_context + self.beta2 * loss_reinforce + loss_baseline + loss_q
        values = (loss_cls, loss_context, loss_reinforce, loss_baseline, loss_q, reward.mean(), r.entropies.mean())
        return total, {key: v.detach() for key, v in zip(STAT_KEYS, values)}, r.logits

    def training_loss(self, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, float]]:
        """``objective`` with its terms as floats (what the training loop logs; ``reward_mean`` is the whole-sequence
        training accuracy)."""
        total, terms, _ = self.objective(x, y)
        return total, {k: float(v) for k, v in terms.items()}

    @torch.no_grad()
    def trace(self, x: Tensor) -> dict[str, object]:
        """Where the model looked: ``locations`` (T, B, 2), ``patch_sizes``, ``box`` (top-down region or None)."""
        r = self.rollout(x)
        return {"locations": r.locations, "patch_sizes": self.sensor.patch_sizes(x.shape[-1]),
                "box": r.top_down.box if r.top_down is not None else None}


def _signature_from(config: type) -> inspect.Signature:
    """The keyword signature a recipe's [model] table is checked against: the config's fields and defaults."""
    return inspect.Signature([
        inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY,
                          default=inspect.Parameter.empty if f.default is MISSING else f.default, annotation=f.type)
        for f in fields(config)])


@register_model("uatt-seq", config=SequenceUATTConfig)
def build_uatt_seq(**options: Any) -> SequenceUATT:
    """Build the sequence attention model from keyword options (every field of :class:`SequenceUATTConfig`)."""
    return SequenceUATT(SequenceUATTConfig(**options))


build_uatt_seq.__signature__ = _signature_from(SequenceUATTConfig)  # type: ignore[attr-defined]


# --------------------------------------------------------------------------------------------------- CNN baseline


class SequenceCNN(nn.Module):
    """``channels`` x (3x3 conv + GroupNorm + ReLU + 2x2 max-pool) -> FC ``hidden`` -> one linear head per position;
    logits (B, K, S) like :class:`SequenceUATT`."""

    def __init__(self, *, num_classes: int, in_channels: int, image_size: int, positions: int,
                 channels: Sequence[int], hidden: int, mean: tuple[float, ...] | None,
                 std: tuple[float, ...] | None) -> None:
        super().__init__()
        if not channels or min(channels) < 1 or hidden < 1 or positions < 1:
            raise ValueError("channels must be non-empty and positive, hidden and positions >= 1")
        layers: list[nn.Module] = []
        if mean is not None and std is not None:
            layers.append(Normalize(tuple(mean), tuple(std)))
        width, side = in_channels, image_size
        for c in channels:
            layers += [nn.Conv2d(width, c, 3, padding=1), nn.GroupNorm(math.gcd(c, 8), c), nn.ReLU(inplace=True),
                       nn.MaxPool2d(2, ceil_mode=True)]
            width, side = c, math.ceil(side / 2)
        self.features = nn.Sequential(*layers, nn.Flatten(), nn.Linear(width * side * side, hidden),
                                      nn.ReLU(inplace=True))
        self.heads = nn.Linear(hidden, num_classes * positions)
        self.num_classes, self.positions = num_classes, positions

    def forward(self, x: Tensor) -> Tensor:
        return self.heads(self.features(x)).view(x.shape[0], self.num_classes, self.positions)


@register_model("cnn-seq")
def build_cnn_seq(*, num_classes: int, in_channels: int, image_size: int, positions: int = 6,
                  channels: Sequence[int] = (32, 64, 128, 128), hidden: int = 512,
                  mean: tuple[float, ...] | None = None, std: tuple[float, ...] | None = None) -> SequenceCNN:
    """The CNN baseline of Table 3 (sized for a CPU; the paper's rows are Goodfellow's 11-layer and Ba's 10-layer
    nets): ``channels`` conv blocks, a ``hidden``-unit FC layer, a head per label position."""
    return SequenceCNN(num_classes=num_classes, in_channels=in_channels, image_size=image_size, positions=positions,
                       channels=tuple(channels), hidden=hidden, mean=mean, std=std)
