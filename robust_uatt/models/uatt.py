"""The unified top-down + bottom-up recurrent attention model (paper 4, Algorithm 1; Eq. 16-17 for the VGG variant).

One step t of the bottom-up loop (Eq. 10a-d), t = 0..T-1:
    x_t = sensor(X, L_t); G_t = f_g(x_t, L_t); H_t = f_h(H_{t-1}, G_t); alpha_t = f_y(H_t); L_{t+1} ~ pi(. | H_t)
so T glimpses use T-1 policy decisions (L_1..L_{T-1}); L_0 is not a policy action. L_0 comes from the top-down
Q-learner when ``top_down=True`` (``TopDownChoice.l0``: uniform inside the chosen region in train, its centre in
eval). Without it, following RAM's "random" start: uniform in [-1, 1]^2 when the model is stochastic (train mode, or
eval with ``policy="sample"``) and the image centre (0, 0) in deterministic eval. ``location_control`` swaps the
learned policy for ablation controls: ``"random"`` (every L_t uniform, also in eval) or ``"center"`` (every L_t =
(0, 0)); neither has a REINFORCE term or a baseline (and neither module is built).

Backbone (Eq. 16-17). ``backbone="vgg16"`` computes feat = VGG16.features_vector(X) once per image (its own
classifier head is dropped: f_y replaces it). ``fusion="classifier"`` (Eq. 17): alpha_t = f_y(cat(H_t, feat));
``fusion="rnn"`` (the paper's prose): cat(G_t, feat) is the core's input. Trained end to end.

Contract with the trainer and the attack harness: ``forward`` (last-step logits), ``rollout``, ``objective``
(Eq. 14 + Q loss, differentiable w.r.t. x: the training loss and the paper's attack loss), ``after_optimizer_step``,
``trace``, the ``policy`` switch and the ``attack_mode`` context manager (gradient path, BPDA, forced region).

Every option lives in :class:`UATTConfig` (validated from its fields; a bad value raises ``ValueError``).
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robust_uatt.models.bottom_up import (
    Baseline,
    ContextHead,
    LocationPolicy,
    LSTMCore,
    RNNCore,
    context_vector,
    patch_entropy,
)
from robust_uatt.models.glimpse import GlimpseNetwork, GlimpseSensor
from robust_uatt.models.registry import register_model
from robust_uatt.models.top_down import TopDown, TopDownChoice
from robust_uatt.models.vgg import VGG16

POLICIES = ("mean", "sample")
LOCATION_CONTROLS = ("learned", "random", "center")
GRAD_PATHS = ("full", "vgg")
STAT_KEYS = ("loss_cls", "loss_context", "loss_reinforce", "loss_baseline", "loss_q", "reward_mean", "entropy_mean")


def _choice(*known: str) -> Any:
    return field(default=known[0], metadata={"choices": known})


@dataclass
class UATTConfig:
    """Every option of the unified attention model; a recipe's ``[model]`` table sets any of them by name.

    Sensor: ``glimpses`` T, ``patch`` g (pixels), ``scales`` m, ``scale_factor`` s, ``max_supersample`` (area-average
    samples per axis for coarse scales). Glimpse net: ``glimpse_net`` "fc" (appendix MNIST) | "conv" (section 4.2),
    ``glimpse_hidden`` (h_g = h_l size, fc), ``glimpse_dim`` (G_t), ``conv_channels`` (SVHN: 64, 64, 128),
    ``glimpse_norm`` "group" | "batch" (conv). Core: ``core`` "rnn" (appendix) | "lstm" (``lstm_layers`` stacked
    LSTMCells; the SVHN recipe uses hidden=512), ``hidden`` D. Policy: ``sigma``, eval ``policy`` "mean" | "sample",
    ``location_control`` "learned" | "random" | "center". Top-down: ``top_down``, ``levels`` and the ``td_*``
    options of ``TopDown``. Constraints: ``entropy`` (Eq. 12-13, patch binarized at ``entropy_threshold``), ``context``
    (Eq. 11, f_c width ``context_hidden``), ``lam`` lambda, ``beta1``, ``beta2`` (Eq. 14). Eq. 16-17: ``backbone``
    "none" | "vgg16", ``vgg_width``, ``fusion`` "classifier" | "rnn". ``mean``/``std``: per-channel input
    standardization applied inside the model (glimpse net and VGG); omitted = none. Inputs are always [0, 1] pixels.
    ``num_classes``, ``in_channels`` and ``image_size`` come from the dataset.
    """

    num_classes: int
    in_channels: int
    image_size: int
    glimpses: int = 6
    patch: int = 8
    scales: int = 1
    scale_factor: float = 2.0
    max_supersample: int = 8
    glimpse_net: str = _choice("fc", "conv")
    glimpse_hidden: int = 128
    glimpse_dim: int = 256
    conv_channels: Sequence[int] = (16, 16, 32)
    glimpse_norm: str = _choice("group", "batch")
    hidden: int = 256
    core: str = _choice("rnn", "lstm")
    lstm_layers: int = 2
    sigma: float = 0.15
    policy: str = _choice(*POLICIES)
    location_control: str = _choice(*LOCATION_CONTROLS)
    top_down: bool = False
    levels: int = 2
    td_feat_dim: int = 64
    td_exploration: str = "epsilon"
    td_epsilon: float = 0.1
    td_target_sync: int = 100
    entropy: bool = True
    entropy_threshold: float = 0.5
    context: bool = True
    context_hidden: int = 256
    lam: float = 0.5
    beta1: float = 1.0
    beta2: float = 0.01
    backbone: str = _choice("none", "vgg16")
    vgg_width: float = 1.0
    fusion: str = _choice("classifier", "rnn")
    mean: Sequence[float] | None = None
    std: Sequence[float] | None = None

    def __post_init__(self) -> None:
        for f in fields(self):
            if "choices" in f.metadata:
                _check_choice(f.name, getattr(self, f.name), f.metadata["choices"])
        if self.glimpses < 1 or self.patch < 1 or self.scales < 1 or self.hidden < 1:
            raise ValueError("glimpses, patch, scales and hidden must all be >= 1")
        if self.scale_factor < 1.0:
            raise ValueError(f"scale_factor must be >= 1, got {self.scale_factor}")
        if len(tuple(self.conv_channels)) != 3:
            raise ValueError(f"conv_channels needs 3 entries (one per conv layer), got {list(self.conv_channels)}")
        mean, std = self.mean, self.std
        if (mean is None) != (std is None) or (mean is not None and not len(mean) == len(std) == self.in_channels):
            raise ValueError(f"mean and std must both be given with {self.in_channels} entries each, or both omitted")
        if self.backbone == "vgg16" and self.image_size < 32:
            raise ValueError(f"backbone 'vgg16' needs images of at least 32x32 (five 2x pools), got {self.image_size}")


@dataclass
class Rollout:
    """Everything one pass over T glimpses produced; what ``eq14_loss`` and the glimpse plots consume."""

    logits: Tensor  # (T, B, K) pre-softmax alpha_t for every step
    hidden: Tensor  # (T, B, D) H_t
    locations: Tensor  # (T, B, 2) L_t, (x, y) in [-1, 1]
    entropies: Tensor  # (T, B) bits of the finest patch at L_t (detached)
    log_probs: Tensor | None = None  # (T-1, B) log pi(L_t | H_{t-1}) for t = 1..T-1; None without a learned policy
    baselines: Tensor | None = None  # (T-1, B) b(H_{t-1}); None without a learned policy
    location_means: Tensor | None = None  # (T-1, B, 2) policy means
    context_logits: Tensor | None = None  # (B, K) z = f_c(C) of Eq. 11; needs y and context=True
    top_down: TopDownChoice | None = None


def eq14_loss(
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


class AttentionControls:
    """The location policy, attack-time switches and the optimizer hook shared by the attention models (``UATT``,
    ``SequenceUATT``): each has ``grad_path``, ``bpda_tau``, ``_policy`` and ``top_down`` (a ``TopDown`` or None)."""

    grad_path: str
    bpda_tau: float
    top_down: Any
    _policy: str

    @property
    def policy(self) -> str:
        """Eval-mode location policy: ``"mean"`` (deterministic) or ``"sample"`` (stochastic, as in training)."""
        return self._policy

    @policy.setter
    def policy(self, value: str) -> None:
        _check_choice("policy", value, POLICIES)
        self._policy = value

    @property
    def stochastic(self) -> bool:
        """Whether this pass draws random locations: always in train mode, in eval only with ``policy="sample"``."""
        return self.training or self._policy == "sample"

    @contextmanager
    def attack_mode(self, *, grad_path: str | None = None, bpda_tau: float | None = None,
                    forced_action: int | None = None) -> Iterator[None]:
        """Attack-time settings, restored on exit; ``None`` leaves a setting as it is.

        ``grad_path``: "full" or "vgg" (the paper's protocol: d loss / d x only through the VGG features).
        ``bpda_tau``: relax the top-down argmax to softmax(Q / tau) in the backward pass (BPDA).
        ``forced_action``: force the top-down region (0..3) for region enumeration; ignored without top-down.
        """
        if grad_path is not None:
            _check_choice("grad_path", grad_path, GRAD_PATHS)
        saved = (self.grad_path, self.bpda_tau, self.top_down.forced_action if self.top_down is not None else None)
        try:
            if grad_path is not None:
                self.grad_path = grad_path
            if bpda_tau is not None:
                self.bpda_tau = float(bpda_tau)
            if forced_action is not None and self.top_down is not None:
                self.top_down.forced_action = int(forced_action)
            yield
        finally:
            self.grad_path, self.bpda_tau = saved[0], saved[1]
            if self.top_down is not None:
                self.top_down.forced_action = saved[2]

    def after_optimizer_step(self) -> None:
        """Let the top-down learner count the update and sync its frozen target network; no-op without it."""
        if self.top_down is not None:
            self.top_down.after_optimizer_step()


class UATT(AttentionControls, nn.Module):
    """Unified attention model, built from a :class:`UATTConfig` (or by name through the zoo: ``build_uatt``)."""

    def __init__(self, config: UATTConfig) -> None:
        super().__init__()
        c = self.config = config
        self.num_classes = c.num_classes
        self.image_size = c.image_size
        self.glimpses = c.glimpses
        self.location_control = c.location_control
        self.use_entropy = c.entropy
        self.use_context = c.context
        self.entropy_threshold = c.entropy_threshold
        self.lam, self.beta1, self.beta2 = c.lam, c.beta1, c.beta2
        self.fusion = c.fusion
        self._policy = c.policy
        # Attack-time switches, set only through ``attack_mode`` (restored afterwards): grad_path "vgg" detaches the
        # glimpse/top-down input so gradients reach x only through the VGG features (the paper's PGD protocol);
        # bpda_tau relaxes the top-down argmax to softmax(Q/tau) in the backward pass.
        self.grad_path = "full"
        self.bpda_tau: float | None = None

        norm_mean = tuple(c.mean) if c.mean is not None else None
        norm_std = tuple(c.std) if c.std is not None else None
        self.backbone: VGG16 | None = None
        feat_dim = 0
        if c.backbone == "vgg16":
            vgg_mean = norm_mean or (0.0,) * c.in_channels
            vgg_std = norm_std or (1.0,) * c.in_channels
            self.backbone = VGG16(c.num_classes, width=c.vgg_width, in_channels=c.in_channels, mean=vgg_mean,
                                  std=vgg_std)
            self.backbone.classifier = nn.Identity()  # f_y of Eq. 17 replaces VGG's own head
            feat_dim = _feature_dim(self.backbone, c.in_channels, c.image_size)

        self.sensor = GlimpseSensor(c.patch, c.scales, c.scale_factor, c.max_supersample)
        self.glimpse_net = GlimpseNetwork(
            c.in_channels, c.patch, c.scales, kind=c.glimpse_net, hidden=c.glimpse_hidden, out_dim=c.glimpse_dim,
            conv_channels=tuple(c.conv_channels), norm=c.glimpse_norm, mean=norm_mean, std=norm_std,
        )  # fmt: skip
        core_in = c.glimpse_dim + (feat_dim if c.fusion == "rnn" else 0)
        self.core = RNNCore(core_in, c.hidden) if c.core == "rnn" else LSTMCore(core_in, c.hidden, c.lstm_layers)
        self.classifier = nn.Linear(c.hidden + (feat_dim if c.fusion == "classifier" else 0), c.num_classes)
        self.context_head = ContextHead(c.hidden, c.num_classes, c.context_hidden) if c.context else None
        self.location_policy = LocationPolicy(c.hidden, c.sigma) if c.location_control == "learned" else None
        self.baseline = Baseline(c.hidden) if c.location_control == "learned" else None
        self.top_down: TopDown | None = None
        if c.top_down:
            self.top_down = TopDown(
                c.in_channels, c.image_size, levels=c.levels, feat_dim=c.td_feat_dim, exploration=c.td_exploration,
                epsilon=c.td_epsilon, target_sync=c.td_target_sync,
            )  # fmt: skip

    def _uniform(self, x: Tensor) -> Tensor:
        return torch.rand(x.shape[0], 2, dtype=x.dtype, device=x.device) * 2 - 1

    def _initial_location(self, x: Tensor, choice: TopDownChoice | None) -> Tensor:
        if choice is not None:
            l0 = choice.l0.to(x.dtype)
            if self.bpda_tau is not None and self.top_down is not None:
                soft = self.top_down.soft_l0(x, self.bpda_tau)
                l0 = l0 + (soft - soft.detach())  # forward: the argmax region's centre; backward: the soft centre
            return l0
        if self.location_control == "random" or (self.location_control == "learned" and self.stochastic):
            return self._uniform(x)
        return x.new_zeros(x.shape[0], 2)

    # ------------------------------------------------------------------------------------------------ rollout
    def rollout(self, x: Tensor, y: Tensor | None = None) -> Rollout:
        """Run T glimpses on x (B, C, H, W) in [0, 1]; with ``y`` also compute Eq. 11's context logits.

        Goes through ``nn.Module.__call__`` (``forward(..., full=True)``), so forward hooks (the harness's pass
        counter) see it like any forward pass."""
        return self(x, y, full=True)

    def _rollout(self, x: Tensor, y: Tensor | None) -> Rollout:
        feat = self.backbone.features_vector(x) if self.backbone is not None else None
        if self.grad_path == "vgg":
            x = x.detach()  # the paper's attack: d loss / d x only through feat = VGG(x) (Eq. 16)
        choice = self.top_down.select(x) if self.top_down is not None else None
        loc = self._initial_location(x, choice)
        state = self.core.initial_state(x.shape[0], x)
        sample = self.stochastic
        logits, hidden, locations, entropies = [], [], [], []
        log_probs, baselines, means = [], [], []
        for t in range(self.glimpses):
            patches = self.sensor(x, loc)
            entropies.append(patch_entropy(patches[:, 0], self.entropy_threshold))
            g = self.glimpse_net(patches, loc)
            if feat is not None and self.fusion == "rnn":
                g = torch.cat([g, feat], dim=1)
            h, state = self.core(g, state)
            head_in = torch.cat([h, feat], dim=1) if feat is not None and self.fusion == "classifier" else h
            logits.append(self.classifier(head_in))
            hidden.append(h)
            locations.append(loc)
            if t == self.glimpses - 1:
                break
            if self.location_policy is not None and self.baseline is not None:
                loc, log_prob, mean = self.location_policy(h, sample)
                loc = loc.to(x.dtype)  # autocast may hand back bf16; keep locations in the image's precision
                log_probs.append(log_prob)
                means.append(mean)
                baselines.append(self.baseline(h))
            elif self.location_control == "random":
                loc = self._uniform(x)
            else:
                loc = x.new_zeros(x.shape[0], 2)

        out = Rollout(
            logits=torch.stack(logits),
            hidden=torch.stack(hidden),
            locations=torch.stack(locations),
            entropies=torch.stack(entropies),
            top_down=choice,
        )
        if self.location_policy is not None:
            empty = x.new_zeros(0, x.shape[0])
            out.log_probs = torch.stack(log_probs) if log_probs else empty
            out.baselines = torch.stack(baselines) if baselines else empty
            out.location_means = torch.stack(means) if means else x.new_zeros(0, x.shape[0], 2)
        if y is not None and self.context_head is not None:
            out.context_logits = self.context_head(context_vector(out.logits, out.hidden, y))
        return out

    def forward(self, x: Tensor, y: Tensor | None = None, *, full: bool = False) -> Tensor | Rollout:
        """Logits (B, K) of the last glimpse (no softmax: attacks want logits); x in [0, 1], NCHW.
        ``full=True``: the whole :class:`Rollout` instead (what ``rollout`` returns)."""
        r = self._rollout(x, y)
        return r if full else r.logits[-1]

    # ------------------------------------------------------------------------------------------------ objective
    def objective(self, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor], Tensor]:
        """The one objective: Eq. 14 (``eq14_loss``) + the top-down Q loss (Eq. 9, reward = bottom-up correctness,
        detached); minimised by training, ascended w.r.t. x by the paper's attack (``pgd-eq14``).

        Returns (total loss, terms, last-step logits (B, K)). ``terms`` maps each of ``STAT_KEYS`` to a detached
        scalar tensor: the ``loss_*`` values are the *unweighted* terms, 0 when switched off; ``entropy_mean`` is a
        measurement of the glimpses (mean bits per patch), reported even with the entropy constraint off.
        """
        r = self.rollout(x, y)
        total, terms = eq14_loss(
            r, y, beta1=self.beta1, beta2=self.beta2, lam=self.lam,
            use_entropy=self.use_entropy, use_context=self.use_context,
        )  # fmt: skip
        loss_q = total.new_zeros(())
        if self.top_down is not None and r.top_down is not None:
            loss_q = self.top_down.q_loss(r.top_down, terms["reward"])
            total = total + loss_q
        values = (terms["cls"], terms["context"], terms["reinforce"], terms["baseline"], loss_q,
                  terms["reward"].mean(), r.entropies.mean())  # fmt: skip
        return total, {key: v.detach() for key, v in zip(STAT_KEYS, values)}, r.logits[-1]

    @torch.no_grad()
    def trace(self, x: Tensor) -> dict[str, object]:
        """Where the model looked: ``locations`` (T, B, 2), ``patch_sizes`` (window side per scale, [-1, 1] units),
        ``box`` (B, 4) top-down region or None. Respects train/eval mode and ``policy`` like ``forward``."""
        r = self.rollout(x)
        return {
            "locations": r.locations,
            "patch_sizes": self.sensor.patch_sizes(x.shape[-1]),
            "box": r.top_down.box if r.top_down is not None else None,
        }


def _check_choice(option: str, value: Any, known: Sequence[str]) -> None:
    """A ValueError naming the closest known choices (the CLI reports it on one line, exit 2)."""
    if value not in known:
        close = difflib.get_close_matches(str(value), list(known), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown {option} '{value}'{hint} (known: {', '.join(known)})")


@torch.no_grad()
def _feature_dim(backbone: VGG16, in_channels: int, image_size: int) -> int:
    """Flat feature size for this image size (VGG's ``feature_dim`` assumes 32 px); a dummy pass in eval mode."""
    was_training = backbone.training
    backbone.eval()
    dim = backbone.features_vector(torch.zeros(1, in_channels, image_size, image_size)).shape[1]
    backbone.train(was_training)
    return int(dim)


@register_model("uatt", config=UATTConfig)
def build_uatt(**options: Any) -> UATT:
    """Build the unified attention model from keyword options (every field of :class:`UATTConfig`)."""
    return UATT(UATTConfig(**options))


# The keyword signature a recipe's [model] table is checked against: UATTConfig's fields, each with its default.
build_uatt.__signature__ = inspect.Signature([  # type: ignore[attr-defined]
    inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY,
                      default=inspect.Parameter.empty if f.default is MISSING else f.default, annotation=f.type)
    for f in fields(UATTConfig)])
