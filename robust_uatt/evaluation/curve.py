"""Security curve: robust accuracy against eps, for one attack or suite, on the first n test images.

Monotone by construction: an adversarial example found at eps' is also one at every eps >= eps', so the reported
accuracy at eps is the mean over examples of min over eps' <= eps of the raw robust flag (what the issue phrases as
taking, per example, the minimum over the radii that bound the current one). The raw per-eps accuracies are kept
beside it: a raw curve that is not monotone is itself a sign of a weak or masked attack. ``api.security_curve``
runs one evaluation per radius and hands the per-example flags to ``monotone_curve``.
"""

from __future__ import annotations

from typing import Any

import torch

from robust_uatt.evaluation.intervals import clopper_pearson
from robust_uatt.evaluation.intervals import describe as describe_ci


def monotone_curve(eps_list: list[float], raw: torch.Tensor, clean: torch.Tensor | None) -> dict[str, Any]:
    """``raw`` (len(eps_list), n) bool: robust flags per radius, in the order of ``eps_list``; ``clean`` (n,).
    Every accuracy comes with its 95% Clopper-Pearson interval (``*_ci``)."""
    order = sorted(range(len(eps_list)), key=lambda i: eps_list[i])
    n = raw.shape[1]
    mono = raw.clone()
    running = torch.ones(raw.shape[1], dtype=torch.bool)
    for i in order:
        running &= raw[i]
        mono[i] = running
    return {
        "eps": eps_list, "clean_accuracy": float(clean.float().mean()) if clean is not None else None,
        "robust_accuracy": [float(m.float().mean()) for m in mono],
        "raw_robust_accuracy": [float(r.float().mean()) for r in raw],
        "raw_monotone": all(float(raw[b].float().mean()) <= float(raw[a].float().mean()) + 1e-12
                            for a, b in zip(order, order[1:])),
        "per_example_raw": [r.int().tolist() for r in raw],
        "clean_accuracy_ci": list(clopper_pearson(int(clean.sum()), n)) if clean is not None else None,
        "robust_accuracy_ci": [list(clopper_pearson(int(m.sum()), n)) for m in mono],
        "raw_robust_accuracy_ci": [list(clopper_pearson(int(r.sum()), n)) for r in raw],
        "confidence_interval": describe_ci(),
    }
