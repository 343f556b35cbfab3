"""Cluttered translated MNIST (RAM protocol, paper section 5 / Table 2), seeded and vectorised.

Protocol: each image is a blank ``canvas`` x ``canvas`` square; one MNIST digit is placed at a uniformly random
position (fully inside), then ``pieces`` ``piece_size`` x ``piece_size`` sub-patches, each cut at a uniformly random
position from a *different* random digit, are pasted at uniformly random positions (fully inside).

Blending: pixels combine with ``max``. Pasting by overwrite could erase strokes of the labelled digit (and make the
label ill-defined), and addition saturates; max keeps every stroke of the digit intact and is order independent, so
the result does not depend on paste order or chunking.

Determinism: every random number is drawn up front from one ``torch.Generator`` seeded with ``seed``; the pasting is
then pure indexing done in chunks, so the output is bit-identical for a seed and independent of the chunk size.
Digit choice and placement are drawn before any clutter, so the same (seed, n) with ``pieces=0`` gives the clean
version of the same images (handy for locating the digit, e.g. to score where an attention model looks).
Speed: 60000 images of 100 x 100 take a few seconds (scatter_reduce over flat indices, no per-image loop).
"""

from __future__ import annotations

import torch
from torch import Tensor

_CHUNK = 4096


def make_cluttered(
    digits: Tensor,
    labels: Tensor,
    *,
    canvas: int = 100,
    pieces: int = 10,
    piece_size: int = 8,
    seed: int = 0,
    n: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Return (images uint8 (n, canvas, canvas), labels int64 (n,)).

    ``n=None`` uses every digit once, in order (labels line up with ``labels``); otherwise ``n`` digits are drawn at
    random (without replacement while ``n <= len(digits)``). Clutter is cut from other digits of the same ``digits``
    tensor, so building test images from the test split never leaks training digits.
    """
    if digits.dim() != 3 or digits.dtype != torch.uint8:
        raise ValueError(f"digits must be uint8 (N, H, W), got {tuple(digits.shape)} {digits.dtype}")
    num, dh, dw = digits.shape
    if labels.shape[0] != num:
        raise ValueError(f"labels ({labels.shape[0]}) and digits ({num}) differ in length")
    if canvas < max(dh, dw) or not 0 < piece_size <= min(dh, dw) or pieces < 0:
        raise ValueError(
            f"need canvas >= digit size ({dh}x{dw}), 0 < piece_size <= digit size, pieces >= 0; "
            f"got canvas={canvas}, piece_size={piece_size}, pieces={pieces}"
        )
    if num < 2 and pieces > 0:
        raise ValueError("clutter needs at least two digits to cut pieces from other digits")

    gen = torch.Generator().manual_seed(seed)
    if n is None:
        n = num
        idx = torch.arange(num)
    elif n <= num:
        idx = torch.randperm(num, generator=gen)[:n]
    else:
        idx = torch.randint(0, num, (n,), generator=gen)
    py = torch.randint(0, canvas - dh + 1, (n,), generator=gen)
    px = torch.randint(0, canvas - dw + 1, (n,), generator=gen)
    # other digit: shift by 1..num-1 so it never equals the placed one
    src = (idx[:, None] + torch.randint(1, max(num, 2), (n, pieces), generator=gen)) % num
    sy = torch.randint(0, dh - piece_size + 1, (n, pieces), generator=gen)
    sx = torch.randint(0, dw - piece_size + 1, (n, pieces), generator=gen)
    ty = torch.randint(0, canvas - piece_size + 1, (n, pieces), generator=gen)
    tx = torch.randint(0, canvas - piece_size + 1, (n, pieces), generator=gen)

    flat_digits = digits.reshape(-1)
    dig_off = (torch.arange(dh)[:, None] * canvas + torch.arange(dw)).reshape(-1)  # digit pixel -> canvas offset
    pr = torch.arange(piece_size)
    piece_src_off = (pr[:, None] * dw + pr).reshape(-1)  # piece pixel -> source offset
    piece_dst_off = (pr[:, None] * canvas + pr).reshape(-1)  # piece pixel -> canvas offset

    out = torch.zeros(n, canvas * canvas, dtype=torch.uint8)
    for lo in range(0, n, _CHUNK):
        hi = min(n, lo + _CHUNK)
        block = out[lo:hi]
        dst = (py[lo:hi] * canvas + px[lo:hi])[:, None] + dig_off
        block.scatter_(1, dst, digits[idx[lo:hi]].reshape(hi - lo, -1))
        if pieces:
            s = (src[lo:hi] * (dh * dw) + sy[lo:hi] * dw + sx[lo:hi])[..., None] + piece_src_off
            d = (ty[lo:hi] * canvas + tx[lo:hi])[..., None] + piece_dst_off
            block.scatter_reduce_(1, d.reshape(hi - lo, -1), flat_digits[s.reshape(hi - lo, -1)], "amax")
    return out.view(n, canvas, canvas), labels[idx].to(torch.int64)
