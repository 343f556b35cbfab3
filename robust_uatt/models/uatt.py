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

Contract with the trainer and the attack harness: ``forward`` (last-step logits), ``rollout``, ``training_loss``
(Eq. 14 + Q loss, differentiable w.r.t. x), ``after_optimizer_step``, ``trace``, and the ``policy`` switch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from robust_uatt.utils.errors import UserError, unknown_name
from robust_uatt.models.losses import uatt_loss
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
from robust_uatt.models.top_down import TopDown, TopDownChoice
from robust_uatt.models.vgg import VGG16

POLICIES = ("mean", "sample")
LOCATION_CONTROLS = ("learned", "random", "center")
STAT_KEYS = ("loss_cls", "loss_context", "loss_reinforce", "loss_baseline", "loss_q", "reward_mean", "entropy_mean")


@dataclass
class Rollout:
    """Everything one pass over T glimpses produced; what ``uatt_loss`` and the glimpse plots consume."""

    logits: Tensor  # (T, B, K) pre-softmax alpha_t for every step
    hidden: Tensor  # (T, B, D) H_t
    locations: Tensor  # (T, B, 2) L_t, (x, y) in [-1, 1]
    entropies: Tensor  # (T, B) bits of the finest patch at L_t (detached)
    log_probs: Tensor | None = None  # (T-1, B) log pi(L_t | H_{t-1}) for t = 1..T-1; None without a learned policy
    baselines: Tensor | None = None  # (T-1, B) b(H_{t-1}); None without a learned policy
    location_means: Tensor | None = None  # (T-1, B, 2) policy means
    context_logits: Tensor | None = None  # (B, K) z = f_c(C) of Eq. 11; needs y and context=True
    top_down: TopDownChoice | None = None


class UATT(nn.Module):
    """Unified attention model; build it with :func:`build_uatt` (which documents every option)."""

    def __init__(
        self,
        *,
        num_classes: int,
        in_channels: int,
        image_size: int,
        glimpses: int,
        patch: int,
        scales: int,
        scale_factor: float,
        max_supersample: int,
        glimpse_net: str,
        glimpse_hidden: int,
        glimpse_dim: int,
        conv_channels: Sequence[int],
        glimpse_norm: str,
        hidden: int,
        core: str,
        lstm_layers: int,
        sigma: float,
        policy: str,
        location_control: str,
        top_down: bool,
        levels: int,
        td_feat_dim: int,
        td_exploration: str,
        td_epsilon: float,
        td_target_sync: int,
        entropy: bool,
        entropy_threshold: float,
        context: bool,
        context_hidden: int,
        lam: float,
        beta1: float,
        beta2: float,
        backbone: str,
        vgg_width: float,
        fusion: str,
        mean: Sequence[float] | None,
        std: Sequence[float] | None,
    ) -> None:
        super().__init__()
        _check_choice("glimpse_net", glimpse_net, ("fc", "conv"))
        _check_choice("glimpse_norm", glimpse_norm, ("group", "batch"))
        _check_choice("core", core, ("rnn", "lstm"))
        _check_choice("policy", policy, POLICIES)
        _check_choice("location_control", location_control, LOCATION_CONTROLS)
        _check_choice("backbone", backbone, ("none", "vgg16"))
        _check_choice("fusion", fusion, ("classifier", "rnn"))
        if glimpses < 1 or patch < 1 or scales < 1 or hidden < 1:
            raise UserError("glimpses, patch, scales and hidden must all be >= 1")
        if scale_factor < 1.0:
            raise UserError(f"scale_factor must be >= 1, got {scale_factor}")
        if len(tuple(conv_channels)) != 3:
            raise UserError(f"conv_channels needs 3 entries (one per conv layer), got {list(conv_channels)}")
        if (mean is None) != (std is None) or (mean is not None and not len(mean) == len(std) == in_channels):
            raise UserError(f"mean and std must both be given with {in_channels} entries each, or both omitted")

        self.num_classes = num_classes
        self.image_size = image_size
        self.glimpses = glimpses
        self.location_control = location_control
        self.use_entropy = entropy
        self.use_context = context
        self.entropy_threshold = entropy_threshold
        self.lam, self.beta1, self.beta2 = lam, beta1, beta2
        self.fusion = fusion
        self._policy = policy
        # Attack-time switches (set through robust_uatt.attacks.base.attack_switches, restored afterwards):
        # grad_path "vgg" detaches the glimpse/top-down input so gradients reach x only through the VGG features (the
        # paper's PGD protocol); bpda_tau relaxes the top-down argmax to softmax(Q/tau) in the backward pass.
        self.grad_path = "full"
        self.bpda_tau: float | None = None

        norm_mean = tuple(mean) if mean is not None else None
        norm_std = tuple(std) if std is not None else None
        self.backbone: VGG16 | None = None
        feat_dim = 0
        if backbone == "vgg16":
            if image_size < 32:
                raise UserError(f"backbone 'vgg16' needs images of at least 32x32 (five 2x pools), got {image_size}")
            vgg_mean = norm_mean or (0.0,) * in_channels
            vgg_std = norm_std or (1.0,) * in_channels
            self.backbone = VGG16(num_classes, width=vgg_width, in_channels=in_channels, mean=vgg_mean, std=vgg_std)
            self.backbone.classifier = nn.Identity()  # f_y of Eq. 17 replaces VGG's own head
            feat_dim = _feature_dim(self.backbone, in_channels, image_size)

        self.sensor = GlimpseSensor(patch, scales, scale_factor, max_supersample)
        self.glimpse_net = GlimpseNetwork(
            in_channels, patch, scales, kind=glimpse_net, hidden=glimpse_hidden, out_dim=glimpse_dim,
            conv_channels=tuple(conv_channels), norm=glimpse_norm, mean=norm_mean, std=norm_std,
        )  # fmt: skip
        core_in = glimpse_dim + (feat_dim if fusion == "rnn" else 0)
        self.core = RNNCore(core_in, hidden) if core == "rnn" else LSTMCore(core_in, hidden, lstm_layers)
        self.classifier = nn.Linear(hidden + (feat_dim if fusion == "classifier" else 0), num_classes)
        self.context_head = ContextHead(hidden, num_classes, context_hidden) if context else None
        self.location_policy = LocationPolicy(hidden, sigma) if location_control == "learned" else None
        self.baseline = Baseline(hidden) if location_control == "learned" else None
        self.top_down: TopDown | None = None
        if top_down:
            self.top_down = TopDown(
                in_channels, image_size, levels=levels, feat_dim=td_feat_dim, exploration=td_exploration,
                epsilon=td_epsilon, target_sync=td_target_sync,
            )  # fmt: skip

    # ------------------------------------------------------------------------------------------------ policy
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
        """Run T glimpses on x (B, C, H, W) in [0, 1]; with ``y`` also compute Eq. 11's context logits."""
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

    def forward(self, x: Tensor) -> Tensor:
        """Logits (B, K) of the last glimpse (no softmax: attacks want logits); x in [0, 1], NCHW."""
        return self.rollout(x).logits[-1]

    # ---------------------------------------------------------------------------------------------- training
    def training_loss(self, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, float]]:
        """Eq. 14 (``uatt_loss``) + the top-down Q loss (Eq. 9, reward = bottom-up correctness, detached).

        Also the attack loss (ascend it w.r.t. x). Stats are floats for metrics.jsonl; the ``loss_*`` values are the
        *unweighted* terms, 0.0 when switched off. ``entropy_mean`` is a measurement of the glimpses (mean bits per
        patch), reported even with the entropy constraint off so the ablation can be compared on it.
        """
        r = self.rollout(x, y)
        total, terms = uatt_loss(
            r, y, beta1=self.beta1, beta2=self.beta2, lam=self.lam,
            use_entropy=self.use_entropy, use_context=self.use_context,
        )  # fmt: skip
        loss_q = total.new_zeros(())
        if self.top_down is not None and r.top_down is not None:
            loss_q = self.top_down.q_loss(r.top_down, terms["reward"])
            total = total + loss_q
        values = (terms["cls"], terms["context"], terms["reinforce"], terms["baseline"], loss_q,
                  terms["reward"].mean(), r.entropies.mean())  # fmt: skip
        stats = {key: float(v.detach()) for key, v in zip(STAT_KEYS, values)}
        return total, stats

    def after_optimizer_step(self) -> None:
        """Let the top-down learner count the update and sync its frozen target network; no-op without it."""
        if self.top_down is not None:
            self.top_down.after_optimizer_step()

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


def _check_choice(option: str, value: str, known: Sequence[str]) -> None:
    if value not in known:
        raise unknown_name(option, value, known)


@torch.no_grad()
def _feature_dim(backbone: VGG16, in_channels: int, image_size: int) -> int:
    """Flat feature size for this image size (VGG's ``feature_dim`` assumes 32 px); a dummy pass in eval mode."""
    was_training = backbone.training
    backbone.eval()
    dim = backbone.features_vector(torch.zeros(1, in_channels, image_size, image_size)).shape[1]
    backbone.train(was_training)
    return int(dim)


def build_uatt(
    *,
    num_classes: int,
    in_channels: int,
    image_size: int,
    glimpses: int = 6,
    patch: int = 8,
    scales: int = 1,
    scale_factor: float = 2.0,
    max_supersample: int = 8,
    glimpse_net: str = "fc",
    glimpse_hidden: int = 128,
    glimpse_dim: int = 256,
    conv_channels: Sequence[int] = (16, 16, 32),
    glimpse_norm: str = "group",
    hidden: int = 256,
    core: str = "rnn",
    lstm_layers: int = 2,
    sigma: float = 0.15,
    policy: str = "mean",
    location_control: str = "learned",
    top_down: bool = False,
    levels: int = 2,
    td_feat_dim: int = 64,
    td_exploration: str = "epsilon",
    td_epsilon: float = 0.1,
    td_target_sync: int = 100,
    entropy: bool = True,
    entropy_threshold: float = 0.5,
    context: bool = True,
    context_hidden: int = 256,
    lam: float = 0.5,
    beta1: float = 1.0,
    beta2: float = 0.01,
    backbone: str = "none",
    vgg_width: float = 1.0,
    fusion: str = "classifier",
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> UATT:
    """Build the unified attention model; every option is a keyword a recipe table can set.

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
    """
    return UATT(**locals())
