"""Multi-digit MNIST (paper section 5, Table 3; the protocol of Goodfellow et al. 2014 and Ba et al. 2015), seeded.

Protocol: each image holds ``n`` MNIST digits, n uniform in [``min_digits``, ``max_digits``] (1..5), written left to
right on a blank ``canvas`` x ``canvas`` square (64), then a ``crop`` x ``crop`` window (54) is cut from it: at a
uniformly random offset for the training split (Goodfellow et al.'s random 54x54 crops of the 64x64 image), at the
centre for the test split. Digits live in the central box that *every* crop contains (side ``crop - (canvas -
crop)``, 44 px for 64/54), so a crop never cuts a digit and the label always describes what is visible.

Layout of one image (all integers, drawn per image): the digit side s shrinks with n so the row fits the box, like
SVHN's crops around the digits resized to 64x64 (one digit is large, five are small):
    s = floor(u * box / (1 + 0.75 (n - 1))), u ~ U(0.85, 1)   (one side for every digit of the image)
gaps between consecutive digits g_i = floor(r_i s), r_i ~ U(0.6, 0.75) (MNIST strokes fill ~20/28 of the frame, so
neighbours touch at most at their edges); the row starts at a uniform x inside the box; each digit moves up or down
by a uniform jitter of at most s / 10 around a uniform row height. Digits are resized from 28x28 with antialiased
bilinear filtering and combined with ``max`` (overlapping blank frames never erase a stroke).

Labels: int64 (N, max_digits + 1): the digits left to right, then the terminal class ``TERMINAL`` (10), then
``IGNORE`` (-100, PyTorch's ``ignore_index``) for the positions after the terminal. So a sequence model predicts
max_digits + 1 labels (5 digits + 1 terminal: 6 outputs x 3 glimpses = the paper's 18 glimpses), a cross-entropy
over the label tensor counts exactly the digits and the terminal, and "the whole sequence right" (every digit and the
length) is plain equality with the prediction decoded up to its first terminal (``models.outputs``).

Determinism: every random number is drawn up front from one ``torch.Generator`` seeded with ``seed``, in fixed-size
tensors (one row per image, one column per digit slot); rendering is pure indexing in chunks, so the output is
bit-identical for a seed and independent of the chunk size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

TERMINAL = 10  # the class after the last digit: "no more digits"
IGNORE = -100  # positions after the terminal (torch.nn.functional.cross_entropy's default ignore_index)
NUM_CLASSES = 11  # digits 0-9 + terminal
_CHUNK = 4096
_STEP_MAX, _STEP_MIN = 0.75, 0.6  # gap between digit frames, in digit sides
_SCALE_MIN = 0.85  # per-image size jitter (times the largest side that fits)
_JITTER = 0.1  # vertical jitter of each digit, in digit sides


@dataclass
class Layout:
    """Where the digits went, for tests and plots: one row per image, one column per digit slot."""

    count: Tensor  # (N,) digits in the image
    source: Tensor  # (N, max_digits) index into the digit tensor (slots >= count: unused)
    x: Tensor  # (N, max_digits) left column of each digit frame, in crop coordinates
    y: Tensor  # (N, max_digits) top row, in crop coordinates
    size: Tensor  # (N,) side of every digit frame of the image


def sequence_labels(digits: Tensor, count: Tensor, max_digits: int) -> Tensor:
    """(N, max_digits) digit labels + (N,) counts -> (N, max_digits + 1) labels with TERMINAL and IGNORE."""
    n = digits.shape[0]
    pos = torch.arange(max_digits + 1)
    out = torch.full((n, max_digits + 1), IGNORE, dtype=torch.int64)
    padded = torch.cat([digits.long(), torch.zeros(n, 1, dtype=torch.int64)], dim=1)
    out = torch.where(pos < count[:, None], padded, out)
    return torch.where(pos == count[:, None], torch.full_like(out, TERMINAL), out)


def _check(digits: Tensor, labels: Tensor, canvas: int, crop: int, min_digits: int, max_digits: int) -> int:
    if digits.dim() != 3 or digits.dtype != torch.uint8:
        raise ValueError(f"digits must be uint8 (N, H, W), got {tuple(digits.shape)} {digits.dtype}")
    if labels.shape[0] != digits.shape[0] or digits.shape[0] == 0:
        raise ValueError(f"need as many labels as digits (and at least one), got {labels.shape[0]} and "
                         f"{digits.shape[0]}")
    if not 1 <= min_digits <= max_digits:
        raise ValueError(f"need 1 <= min_digits <= max_digits, got {min_digits} and {max_digits}")
    box = crop - (canvas - crop)
    smallest = int(_SCALE_MIN * box / (1 + _STEP_MAX * (max_digits - 1)))
    if crop > canvas or smallest < 4:
        raise ValueError(f"canvas {canvas} / crop {crop} leave a {box}-pixel box: {max_digits} digits would be "
                         f"{smallest} px wide; use a crop closer to the canvas (64/54) or fewer digits")
    return box


def _draw(gen: Tensor, n: int, num: int, box: int, margin: int, min_d: int, max_d: int, train: bool) -> Layout:
    """Every random number of the layout, drawn in a fixed order from ``gen``."""
    count = torch.randint(min_d, max_d + 1, (n,), generator=gen)
    source = torch.randint(0, num, (n, max_d), generator=gen)
    u = _SCALE_MIN + (1 - _SCALE_MIN) * torch.rand(n, generator=gen)
    ratio = _STEP_MIN + (_STEP_MAX - _STEP_MIN) * torch.rand(n, max_d, generator=gen)
    ux, uy = torch.rand(n, generator=gen), torch.rand(n, generator=gen)
    uj = torch.rand(n, max_d, generator=gen) * 2 - 1
    crop_off = torch.randint(0, margin + 1, (n, 2), generator=gen) if train else torch.full((n, 2), margin // 2)

    tallest = int(box / (1 + 2 * _JITTER))  # a digit and its vertical jitter fit the box
    size = (u * box / (1 + _STEP_MAX * (count - 1))).floor().long().clamp(1, tallest)
    gaps = (ratio * size[:, None]).floor().long()
    slot = torch.arange(max_d)
    gaps = torch.where(slot[None, :] < (count - 1)[:, None], gaps, 0)  # only between digits that exist
    offsets = torch.cat([torch.zeros(n, 1, dtype=torch.long), gaps.cumsum(1)[:, :-1]], dim=1)  # (n, max_d)
    width = size + gaps.sum(1)
    jit = (_JITTER * size).floor().long()
    x0 = margin + (ux * (box - width + 1)).floor().long()
    y0 = margin + jit + (uy * (box - size - 2 * jit + 1)).floor().long()
    xs = x0[:, None] + offsets - crop_off[:, 1:2]
    ys = y0[:, None] + (uj * (jit[:, None] + 1)).floor().long().clamp(-jit[:, None], jit[:, None]) - crop_off[:, :1]
    return Layout(count, source, xs, ys, size)


def _resize(digits: Tensor, side: int) -> Tensor:
    """uint8 (m, H, W) -> uint8 (m, side, side), antialiased bilinear (no aliasing when shrinking 28 -> 9 px)."""
    out = F.interpolate(digits[:, None].float(), size=(side, side), mode="bilinear", antialias=True,
                        align_corners=False)
    return out[:, 0].round().clamp(0, 255).to(torch.uint8)


def make_multidigit(
    digits: Tensor,
    labels: Tensor,
    *,
    n: int,
    canvas: int = 64,
    crop: int = 54,
    min_digits: int = 1,
    max_digits: int = 5,
    train: bool = True,
    seed: int = 0,
    return_layout: bool = False,
) -> tuple[Tensor, Tensor] | tuple[Tensor, Tensor, Layout]:
    """Return (images uint8 (n, crop, crop), labels int64 (n, max_digits + 1)) [, Layout].

    ``digits`` (N, H, W) uint8 and ``labels`` (N,) are the single digits to draw from (with replacement); build the
    test images from MNIST's test split so no training digit leaks into them. ``train`` picks random crops (else
    central ones).
    """
    box = _check(digits, labels, canvas, crop, min_digits, max_digits)
    margin = canvas - crop
    gen = torch.Generator().manual_seed(seed)
    lay = _draw(gen, n, digits.shape[0], box, margin, min_digits, max_digits, train)
    out = torch.zeros(n * crop * crop, dtype=torch.uint8)
    used = torch.arange(max_digits)[None, :] < lay.count[:, None]  # (n, max_d)
    for lo in range(0, n, _CHUNK):
        hi = min(n, lo + _CHUNK)
        img, slot = torch.nonzero(used[lo:hi], as_tuple=True)
        img = img + lo
        sizes = lay.size[img]
        for side in torch.unique(sizes).tolist():
            pick = sizes == side
            i, s = img[pick], slot[pick]
            patch = _resize(digits[lay.source[i, s]], side).reshape(len(i), -1)  # (m, side*side)
            r = torch.arange(side)
            local = (r[:, None] * crop + r[None, :]).reshape(-1)
            dst = (i * crop * crop + lay.y[i, s] * crop + lay.x[i, s])[:, None] + local
            out.scatter_reduce_(0, dst.reshape(-1), patch.reshape(-1), "amax")
    seq = sequence_labels(labels[lay.source], lay.count, max_digits)
    images = out.view(n, crop, crop)
    return (images, seq, lay) if return_layout else (images, seq)
