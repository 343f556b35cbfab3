"""Figures written as PNG (atomically): the security curve."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from robust_uatt.utils.files import atomic_write_bytes


def plot_curve(curve: dict[str, Any], path: str | Path, title: str) -> None:
    """Robust accuracy (monotone, with its 95% Clopper-Pearson band) and the raw per-eps values against eps."""
    fig = Figure(figsize=(5, 3.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    pairs = sorted(zip(curve["eps"], curve["robust_accuracy"], curve["raw_robust_accuracy"],
                       curve.get("robust_accuracy_ci") or [None] * len(curve["eps"])))
    eps = [p[0] for p in pairs]
    if all(p[3] is not None for p in pairs):
        ax.fill_between(eps, [100 * p[3][0] for p in pairs], [100 * p[3][1] for p in pairs], alpha=0.2,
                        label="95% Clopper-Pearson interval")
    ax.plot(eps, [100 * p[1] for p in pairs], "o-", label="robust accuracy (monotone)")
    ax.plot(eps, [100 * p[2] for p in pairs], "x--", alpha=0.6, label="raw per-eps value")
    ax.set_xlabel("eps (L-inf, pixel [0,1] units)")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(-2, 102)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    atomic_write_bytes(path, buffer.getvalue())
