"""Glimpse sensor and glimpse network (paper 3.2, Eq. 10a; appendix "Glimpse network").

Coordinate convention (shared with ``top_down.py``). A location L = (x, y) lives in [-1, 1]^2 with (0, 0) the image
centre and (1, 1) the bottom-right corner; x indexes columns, y rows. L = -1 is the *outer edge* of the first pixel and
L = +1 the outer edge of the last one, i.e. ``F.grid_sample(..., align_corners=False)``: pixel i's centre sits at
-1 + (2i + 1) / W. A g x g patch centred at L spans [L - g/W, L + g/W] horizontally, so a patch whose top-left
corner is the integer pixel (r, c) has centre L = (-1 + (2c + g) / W, -1 + (2r + g) / H); its g sample points then
fall exactly on pixel centres and scale 0 reproduces ``x[:, :, r:r+g, c:c+g]`` bit for bit (up to float rounding).

Scales. Scale k covers a window of side g * s^k pixels around the same centre and is reduced to g x g by area
averaging: each output pixel is the mean of q_k x q_k bilinear samples spread over its s^k x s^k cell, with
q_k = ceil(s^k) (capped by ``max_supersample``). The sub-samples sit at the centres of the cell's own pixels, so
for an integer s^k at an aligned location the result is exactly ``avg_pool2d(crop, s^k)``; otherwise (fractional
factor, sub-pixel location, or a capped q_k) it is the bilinear approximation of that box filter. Scale 0 uses one
sample per pixel. All points of all scales for the whole batch go through ONE ``F.grid_sample`` call; the per-scale
point counts differ, so the grid is one flat (B, 1, N, 2) list that is split and averaged afterwards.

Outside the image the sensor reads zeros (``padding_mode="zeros"``); the sensor is differentiable w.r.t. the pixels
and the location (bilinear sampling), which the attacks and the location gradient rely on.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robust_uatt.models.vgg import Normalize


class GlimpseSensor(nn.Module):
    """Retina-like sensor: ``scales`` concentric square patches of side ``patch`` * ``scale_factor``^k, each g x g."""

    def __init__(self, patch: int, scales: int = 1, scale_factor: float = 2.0, max_supersample: int = 8) -> None:
        super().__init__()
        if patch < 1 or scales < 1 or scale_factor < 1.0 or max_supersample < 1:
            raise ValueError("need patch >= 1, scales >= 1, scale_factor >= 1 and max_supersample >= 1")
        self.patch = patch
        self.scales = scales
        self.scale_factor = float(scale_factor)
        offsets, counts = [], []
        for k in range(scales):
            cell = self.scale_factor**k  # input pixels per output pixel, per axis
            q = 1 if k == 0 else min(max_supersample, math.ceil(cell - 1e-9))
            offsets.append(self._scale_offsets(patch, cell, q))
            counts.append(q)
        self.supersample = counts  # q_k per scale
        # Flat (N, 2) list of (x, y) offsets from the patch centre, in input pixels. Non-persistent: derived data.
        self.register_buffer("offsets_px", torch.cat(offsets, dim=0), persistent=False)

    @staticmethod
    def _scale_offsets(patch: int, cell: float, q: int) -> Tensor:
        """Offsets ordered (row j, sub-row a, col i, sub-col b) so a reshape to (g, q, g, q) recovers the cells."""
        centres = (torch.arange(patch, dtype=torch.float64) + 0.5 - patch / 2) * cell  # output pixel centres
        if q == 1:
            sub = torch.zeros(1, dtype=torch.float64)
        else:  # centres of the cell's pixels: exact box filter when q == cell is an integer
            sub = (cell - 1) * (torch.arange(q, dtype=torch.float64) / (q - 1) - 0.5)
        axis = (centres[:, None] + sub[None, :]).reshape(-1)  # (g*q,)
        ys, xs = torch.meshgrid(axis, axis, indexing="ij")
        return torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=1).float()

    def patch_sizes(self, image_width: int) -> list[float]:
        """Side of each scale's window in [-1, 1] units (horizontal axis), e.g. for drawing glimpse boxes."""
        return [2.0 * self.patch * self.scale_factor**k / image_width for k in range(self.scales)]

    def forward(self, x: Tensor, loc: Tensor) -> Tensor:
        """x (B, C, H, W), loc (B, 2) in [-1, 1] -> patches (B, scales, C, g, g)."""
        b, c, h, w = x.shape
        g = self.patch
        to_norm = torch.tensor([2.0 / w, 2.0 / h], dtype=x.dtype, device=x.device)
        grid = loc.to(x.dtype)[:, None, :] + self.offsets_px.to(x.dtype) * to_norm  # (B, N, 2)
        samples = F.grid_sample(x, grid[:, None], mode="bilinear", padding_mode="zeros", align_corners=False)
        samples = samples[:, :, 0]  # (B, C, N)
        out, start = [], 0
        for q in self.supersample:  # loop over scales (static, <= a handful), not over samples
            n = g * q * g * q
            cells = samples[:, :, start : start + n].reshape(b, c, g, q, g, q)
            out.append(cells.mean(dim=(3, 5)))
            start += n
        return torch.stack(out, dim=1)


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(channels, 8), channels)


class GlimpseNetwork(nn.Module):
    """G_t = f_g(x_t, L_t) (Eq. 10a): what-pathway G_img(patches) plus where-pathway G_loc(L_t).

    ``kind="fc"`` is the appendix's MNIST net: h_g = ReLU(Linear(x_t)), h_l = ReLU(Linear(L_t)), G_t = ReLU(Linear(h_g +
    h_l)). The sum h_g + h_l needs equal sizes, so both use ``hidden`` (128 in the paper); G_t has ``out_dim`` (256).

    ``kind="conv"`` is section 4.2's net: three conv layers (5x5, 3x3, 3x3; the SVHN appendix uses 64, 64, 128 --
    small defaults here for CPU) with normalization, max-pooling after the first two, then FC -> ``out_dim``; G_loc is
    FC -> ``out_dim``; G_t = ReLU(G_img) + ReLU(G_loc), the paper's literal sum. Normalization is GroupNorm by default
    (``norm="group"``) because the sensor runs T times per batch: BatchNorm would mix statistics of different glimpse
    steps and behave differently in train and eval (attacks run in eval). ``norm="batch"`` is available.

    Scales are stacked as channels (scales * C). ``mean``/``std`` (per image channel) standardize the patch after the
    sensor so entropy is still computed on raw [0, 1] pixels; ``None`` means no standardization.
    """

    def __init__(
        self,
        in_channels: int,
        patch: int,
        scales: int,
        kind: str = "fc",
        hidden: int = 128,
        out_dim: int = 256,
        conv_channels: tuple[int, int, int] = (16, 16, 32),
        norm: str = "group",
        mean: tuple[float, ...] | None = None,
        std: tuple[float, ...] | None = None,
    ) -> None:
        super().__init__()
        if kind not in ("fc", "conv"):
            raise ValueError(f"glimpse network kind must be 'fc' or 'conv', got {kind!r}")
        if norm not in ("group", "batch"):
            raise ValueError(f"glimpse norm must be 'group' or 'batch', got {norm!r}")
        self.kind = kind
        self.out_dim = out_dim
        if mean is None or std is None:
            mean, std = (0.0,) * in_channels, (1.0,) * in_channels
        self.normalize = Normalize(tuple(mean), tuple(std))
        depth = scales * in_channels
        if kind == "fc":
            self.what = nn.Linear(depth * patch * patch, hidden)
            self.where = nn.Linear(2, hidden)
            self.merge = nn.Linear(hidden, out_dim)
        else:
            c1, c2, c3 = conv_channels
            make_norm = _group_norm if norm == "group" else nn.BatchNorm2d
            self.convs = nn.Sequential(
                nn.Conv2d(depth, c1, 5, padding=2), make_norm(c1), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True),
                nn.Conv2d(c1, c2, 3, padding=1), make_norm(c2), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True),
                nn.Conv2d(c2, c3, 3, padding=1), make_norm(c3), nn.ReLU(),
            )  # fmt: skip
            side = math.ceil(math.ceil(patch / 2) / 2)
            self.what = nn.Linear(c3 * side * side, out_dim)
            self.where = nn.Linear(2, out_dim)

    def forward(self, patches: Tensor, loc: Tensor) -> Tensor:
        """patches (B, scales, C, g, g) raw pixels, loc (B, 2) -> G_t (B, out_dim)."""
        b, m, c, g, _ = patches.shape
        z = self.normalize(patches.reshape(b * m, c, g, g)).reshape(b, m * c, g, g)
        if self.kind == "fc":
            h_g = F.relu(self.what(z.flatten(1)))
            h_l = F.relu(self.where(loc))
            return F.relu(self.merge(h_g + h_l))
        g_img = F.relu(self.what(self.convs(z).flatten(1)))
        g_loc = F.relu(self.where(loc))
        return g_img + g_loc
