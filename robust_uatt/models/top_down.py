"""Top-down attention (paper 4.1, Algorithm 1 lines 4-6, 21): Q-learning over a coarse-to-fine quad-tree of regions.

Geometry. Coordinates are normalized to [-1, 1] with (0, 0) the image centre and (1, 1) the bottom-right corner,
matching the glimpse sensor. Pyramid level l (0 = coarsest) is the image area-downsampled by 2^(levels-1-l). Decision
level l looks at the current region *at level l's resolution*; because the region halves while the resolution doubles,
every decision sees the same number of pixels, R = image_size / 2^(levels-1), split 2x2 into quadrants of q = R/2.
Quadrant index a = 2*row + col: 0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right. With the paper's setting
(levels=2) there is exactly one decision on the half-resolution image and the chosen quadrant is the final region.

Rounding. Crops are taken with ``affine_grid`` + ``grid_sample`` in normalized coordinates on the whole batch, so
the region geometry is exact for any image size; only the *sampling* resolution q = max(1, round(image_size /
2^levels)) is rounded (100 px, levels=3 -> q=12 for a 12.5-pixel quadrant: bilinear resampling, no misplaced edges).
When sizes divide evenly (28/32/100 with levels=2) the samples fall on pixel centres and reproduce the pyramid exactly.

Networks. The paper's two-layer Q-network: a shared conv layer (+ ReLU, 4x4 average pool, FC to ``feat_dim``) encodes
each quadrant into v_i (Eq. 6); s_l = [v_1..v_4] (Eq. 7); one FC layer maps s_l to 4 Q-values. Weights are shared
across decision levels (every level sees the same R x R view). A frozen deepcopy (the "target" network of Algorithm
1 / DQN) supplies max_a Q(s_{l+1}, a) in the Bellman target (Eq. 8) and is synced every ``target_sync`` optimizer steps.
With levels=2 the only decision is terminal, so y = reward and the target network is never consulted.

Exploration (train mode). ``"epsilon"`` (default): epsilon-greedy, epsilon=0.1 -- the rewards are {0, 1} and the
quadrant choice is one-shot, so a small fixed uniform-exploration rate is enough and keeps the bottom-up model mostly
fed with the region it will see at test time. ``"softmax"``: sample from softmax(Q / temperature), the paper's wording
("softmax to decide the next region"). Eval mode: argmax, deterministic.

Gradients. ``select`` runs under ``no_grad``: the region choice is discrete, so nothing downstream (bottom-up losses,
attacks on the input) can or should push gradients into the Q-network. ``q_loss`` re-encodes the stored observations
with gradients, so it works no matter how ``select`` was called; it is the only source of Q-network gradients.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# (col, row) offsets of quadrant a = 2*row + col, used to descend into a region.
_QUAD_COL = torch.tensor([0.0, 1.0, 0.0, 1.0])
_QUAD_ROW = torch.tensor([0.0, 0.0, 1.0, 1.0])


@dataclass
class TopDownChoice:
    """What one top-down pass decided; ``obs`` keeps the raw quadrant crops so ``q_loss`` can recompute Q."""

    actions: Tensor  # (B, levels-1) long: quadrant chosen at each decision level
    box: Tensor  # (B, 4) final region (x0, y0, x1, y1) in [-1, 1] coordinates
    l0: Tensor  # (B, 2) initial glimpse location (x, y)
    q_values: list[Tensor]  # per decision level (B, 4), detached
    states: list[Tensor]  # per decision level s_l (B, 4*feat_dim), detached
    obs: list[Tensor] = field(default_factory=list)  # per decision level (B, 4, C, q, q) crops, detached


class QNet(nn.Module):
    """Shared quadrant encoder (conv -> FC, Eq. 6) plus a linear Q head on the concatenated state (Eq. 7)."""

    def __init__(self, in_channels: int, feat_dim: int, conv_channels: int = 16, pool: int = 4) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, conv_channels, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(pool)
        self.fc = nn.Linear(conv_channels * pool * pool, feat_dim)
        self.head = nn.Linear(4 * feat_dim, 4)

    def state(self, obs: Tensor) -> Tensor:
        """obs (B, 4, C, q, q) -> s_l (B, 4*feat_dim)."""
        b = obs.shape[0]
        h = F.relu(self.conv(obs.flatten(0, 1)))
        v = F.relu(self.fc(self.pool(h).flatten(1)))
        return v.reshape(b, -1)

    def forward(self, obs: Tensor) -> Tensor:
        return self.head(self.state(obs))


class TopDown(nn.Module):
    """Coarse-to-fine region selection by Q-learning; see the module docstring for geometry and design choices."""

    def __init__(
        self,
        in_channels: int,
        image_size: int,
        levels: int = 2,
        feat_dim: int = 64,
        exploration: str = "epsilon",
        epsilon: float = 0.1,
        gamma: float = 1.0,
        target_sync: int = 100,
        temperature: float = 0.1,
    ) -> None:
        super().__init__()
        if levels < 2:
            raise ValueError(f"levels must be >= 2 (one coarse level + the original), got {levels}")
        if exploration not in ("epsilon", "softmax"):
            raise ValueError(f"exploration must be 'epsilon' or 'softmax', got {exploration!r}")
        if not 0.0 <= epsilon <= 1.0:
            raise ValueError(f"epsilon must be in [0, 1], got {epsilon}")
        if temperature <= 0 or target_sync < 1:
            raise ValueError("temperature must be > 0 and target_sync >= 1")
        self.in_channels = in_channels
        self.image_size = image_size
        self.levels = levels
        self.exploration = exploration
        self.epsilon = epsilon
        self.temperature = temperature
        self.forced_action: int | None = None  # attack-time override of the first decision (region enumeration)
        self.gamma = gamma
        self.target_sync = target_sync
        self.crop = max(1, round(image_size / 2**levels))  # q: sampling side of one quadrant
        self.q_net = QNet(in_channels, feat_dim)
        self.target_net = copy.deepcopy(self.q_net)
        self.target_net.requires_grad_(False)
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))

    # ----------------------------------------------------------------------------------------------- geometry
    def pyramid(self, x: Tensor) -> list[Tensor]:
        """Level l image = x area-downsampled by 2^(levels-1-l); the last level is x itself."""
        size = x.shape[-1]
        out = []
        for lvl in range(self.levels - 1):
            s = max(1, round(size / 2 ** (self.levels - 1 - lvl)))
            out.append(F.interpolate(x, size=(s, s), mode="area"))
        out.append(x)
        return out

    def observe(self, image: Tensor, box: Tensor) -> Tensor:
        """Crop ``box`` (B, 4) from ``image`` at 2q x 2q and split it 2x2 -> (B, 4, C, q, q), batched."""
        b, c = image.shape[:2]
        q = self.crop
        x0, y0, x1, y1 = box.unbind(1)
        theta = torch.zeros(b, 2, 3, dtype=image.dtype, device=image.device)
        theta[:, 0, 0] = (x1 - x0) / 2
        theta[:, 0, 2] = (x1 + x0) / 2
        theta[:, 1, 1] = (y1 - y0) / 2
        theta[:, 1, 2] = (y1 + y0) / 2
        grid = F.affine_grid(theta, [b, c, 2 * q, 2 * q], align_corners=False)
        region = F.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=False)
        # (B, C, 2, q, 2, q) -> (B, row, col, C, q, q) -> (B, 4, C, q, q) with a = 2*row + col
        return region.view(b, c, 2, q, 2, q).permute(0, 2, 4, 1, 3, 5).reshape(b, 4, c, q, q)

    @staticmethod
    def quadrant(box: Tensor, action: Tensor) -> Tensor:
        """Sub-box of ``box`` (B, 4) for quadrant ``action`` (B,)."""
        x0, y0, x1, y1 = box.unbind(1)
        hw, hh = (x1 - x0) / 2, (y1 - y0) / 2
        col = _QUAD_COL.to(box)[action]
        row = _QUAD_ROW.to(box)[action]
        nx0, ny0 = x0 + col * hw, y0 + row * hh
        return torch.stack([nx0, ny0, nx0 + hw, ny0 + hh], dim=1)

    # ---------------------------------------------------------------------------------------------- decisions
    def _act(self, q: Tensor) -> Tensor:
        """Greedy in eval mode; epsilon-greedy or softmax(Q / T) sampling in train mode; ``forced_action`` (set by
        the region-enumeration attack) overrides the first decision."""
        if self.forced_action is not None:
            return torch.full((q.shape[0],), int(self.forced_action), dtype=torch.long, device=q.device)
        greedy = q.argmax(dim=1)
        if not self.training:
            return greedy
        if self.exploration == "softmax":
            return torch.multinomial(F.softmax(q / self.temperature, dim=1), 1).squeeze(1)
        explore = torch.rand(q.shape[0], device=q.device) < self.epsilon
        random = torch.randint(0, 4, (q.shape[0],), device=q.device)
        return torch.where(explore, random, greedy)

    @torch.no_grad()
    def select(self, x: Tensor) -> TopDownChoice:
        """Descend the pyramid from the whole image, choosing one quadrant per decision level."""
        b = x.shape[0]
        x = x.detach()
        box = torch.tensor([-1.0, -1.0, 1.0, 1.0], dtype=x.dtype, device=x.device).expand(b, 4).contiguous()
        actions, qs, states, obs_list = [], [], [], []
        for image in self.pyramid(x)[:-1]:
            obs = self.observe(image, box)
            s = self.q_net.state(obs)
            q = self.q_net.head(s)
            a = self._act(q)
            box = self.quadrant(box, a)
            actions.append(a)
            qs.append(q)
            states.append(s)
            obs_list.append(obs)
        x0, y0, x1, y1 = box.unbind(1)
        if self.training:
            u = torch.rand(b, 2, dtype=x.dtype, device=x.device)
            l0 = torch.stack([x0 + u[:, 0] * (x1 - x0), y0 + u[:, 1] * (y1 - y0)], dim=1)
        else:
            l0 = torch.stack([(x0 + x1) / 2, (y0 + y1) / 2], dim=1)
        return TopDownChoice(torch.stack(actions, dim=1), box, l0, qs, states, obs_list)

    def soft_l0(self, x: Tensor, tau: float) -> Tensor:
        """A differentiable stand-in for the first decision's region centre: sum_a softmax(Q/tau)_a * centre_a.

        Used by BPDA attacks (the argmax over Q has zero gradient w.r.t. the pixels); only the first decision level
        is relaxed, which is the whole choice in the paper's 2-level setting.
        """
        b = x.shape[0]
        box = torch.tensor([-1.0, -1.0, 1.0, 1.0], dtype=x.dtype, device=x.device).expand(b, 4).contiguous()
        q = self.q_net(self.observe(self.pyramid(x)[0], box))
        centres = torch.stack([self.quadrant(box, torch.full((b,), a, device=x.device)) for a in range(4)], dim=1)
        centres = torch.stack([(centres[..., 0] + centres[..., 2]) / 2, (centres[..., 1] + centres[..., 3]) / 2], -1)
        return (F.softmax(q / tau, dim=1).unsqueeze(-1) * centres).sum(dim=1)

    # --------------------------------------------------------------------------------------------- learning
    def q_loss(self, choice: TopDownChoice, reward: Tensor) -> Tensor:
        """Eq. 8-9: mean over levels and batch of (Q(s_l, a_l) - y_l)^2.

        y_l = gamma * max_a Q_target(s_{l+1}, a) for non-final levels (intermediate reward 0, frozen target, no grad);
        y_l = reward for the last decision (1 iff the bottom-up model was right, Algorithm 1 lines 15-20).
        """
        if not choice.obs:
            raise ValueError("TopDownChoice.obs is empty: q_loss needs the crops recorded by TopDown.select")
        n = len(choice.obs)
        reward = reward.detach().to(choice.obs[0].dtype).reshape(-1)
        losses = []
        for lvl in range(n):
            q = self.q_net(choice.obs[lvl]).gather(1, choice.actions[:, lvl : lvl + 1]).squeeze(1)
            if lvl == n - 1:
                y = reward
            else:
                with torch.no_grad():
                    y = self.gamma * self.target_net(choice.obs[lvl + 1]).max(dim=1).values
            losses.append(F.mse_loss(q, y))
        return torch.stack(losses).mean()

    def after_optimizer_step(self) -> None:
        """Count an optimizer update; copy online -> frozen target every ``target_sync`` updates."""
        self.updates += 1
        if int(self.updates) % self.target_sync == 0:
            self.sync_target()

    @torch.no_grad()
    def sync_target(self) -> None:
        self.target_net.load_state_dict(self.q_net.state_dict())

    def train(self, mode: bool = True) -> TopDown:
        """The target network has no train-time behaviour of its own; keep it in eval mode."""
        super().train(mode)
        self.target_net.eval()
        return self
