"""A picture of where an attention model looks: top-down region, numbered glimpse windows, path between them.

Coordinates follow the glimpse sensor: (x, y) in [-1, 1], (0, 0) the image centre, (1, 1) the bottom-right corner,
``align_corners=False`` (so -1 is the outer edge of the first pixel). Window sides in ``trace["patch_sizes"]`` are in
the same units (window_pixels * 2 / image_size); only the finest (smallest) window is drawn to keep panels readable.

Uses matplotlib's object API with the Agg canvas (no pyplot global state, safe in worker threads and headless runs)
and writes atomically (``robust_uatt.utils.files.atomic_write_bytes``).
"""

from __future__ import annotations

import io
import math
from itertools import takewhile
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from torch import Tensor

from robust_uatt.utils.files import atomic_write_bytes


def _np(value: Any) -> np.ndarray:
    if isinstance(value, Tensor):
        return value.detach().float().cpu().numpy()
    return np.asarray(value, dtype=np.float64)


def _to_pixels(u: np.ndarray, size: int) -> np.ndarray:
    """[-1, 1] (align_corners=False) -> imshow coordinates (pixel centres at integers)."""
    return (u + 1.0) / 2.0 * size - 0.5


def _label(value: Any, i: int) -> int | str | None:
    """The class of example i, or its digit sequence as text up to the terminal (sequence labels, Table 3)."""
    if value is None:
        return None
    row = value[i]
    if getattr(row, "ndim", 0) == 1:
        return "".join(str(d) for d in takewhile(lambda d: 0 <= d <= 9, row.tolist()))
    return int(row)


def plot_glimpses(
    images: Tensor,
    trace: dict,
    path: str | Path,
    *,
    labels: Sequence[int] | Tensor | None = None,
    preds: Sequence[int] | Tensor | None = None,
    title: str = "",
) -> None:
    """Draw a grid of the B images with the top-down box (dashed) and glimpses 1..T (finest window + path)."""
    imgs = _np(images)
    if imgs.ndim != 4:
        raise ValueError(f"images must be (B, C, H, W), got shape {imgs.shape}")
    b, c, h, w = imgs.shape
    locs = _np(trace["locations"]) if trace.get("locations") is not None else np.zeros((0, b, 2))
    sizes = [float(s) for s in trace.get("patch_sizes") or []]
    side = min(sizes) if sizes else None
    box = _np(trace["box"]) if trace.get("box") is not None else None

    cols = min(b, 6)
    rows = math.ceil(b / cols)
    fig = Figure(figsize=(2.4 * cols, 2.6 * rows + (0.4 if title else 0.0)))
    FigureCanvasAgg(fig)
    for i in range(b):
        ax = fig.add_subplot(rows, cols, i + 1)
        img = np.clip(imgs[i].transpose(1, 2, 0), 0.0, 1.0)
        ax.imshow(img[..., 0] if c == 1 else img, cmap="gray" if c == 1 else None, vmin=0.0, vmax=1.0)
        ax.set_xlim(-0.5, w - 0.5)
        ax.set_ylim(h - 0.5, -0.5)
        ax.set_xticks([])
        ax.set_yticks([])
        if box is not None:
            x0, x1 = _to_pixels(box[i, [0, 2]], w)
            y0, y1 = _to_pixels(box[i, [1, 3]], h)
            ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="cyan", ls="--", lw=1.5))
        if locs.shape[0]:
            px, py = _to_pixels(locs[:, i, 0], w), _to_pixels(locs[:, i, 1], h)
            ax.plot(px, py, "-", color="yellow", lw=1.0, alpha=0.8)
            for t in range(locs.shape[0]):
                if side is not None:
                    sw, sh = side / 2 * w, side / 2 * h
                    ax.add_patch(
                        Rectangle((px[t] - sw / 2, py[t] - sh / 2), sw, sh, fill=False, ec="red", lw=1.0)
                    )
                ax.text(px[t], py[t], str(t + 1), color="yellow", fontsize=7, ha="center", va="center")
        y, p = _label(labels, i), _label(preds, i)
        parts = [f"y={y}" if y is not None else "", f"pred={p}" if p is not None else ""]
        wrong = y is not None and p is not None and y != p
        ax.set_title(" ".join(s for s in parts if s), fontsize=8, color="red" if wrong else "black")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    atomic_write_bytes(path, buffer.getvalue())


__all__ = ["plot_glimpses"]
