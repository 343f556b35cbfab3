"""robust-uatt: adversarial-robustness benchmarking of the unified top-down and bottom-up attention model.

The public API (see ``robust_uatt.api`` and the README's "Python API")::

    load_model, list_models, list_attacks, list_suites, make_attack, evaluate, evaluate_shard, EvaluationResult,
    train, security_curve, compare, benchmark, seeds

Names are imported on first use, so ``import robust_uatt`` (and the command line's ``--help``) stays fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from robust_uatt._version import __version__

_API = ("load_model", "list_models", "list_attacks", "list_suites", "make_attack", "evaluate", "evaluate_shard",
        "train", "security_curve", "compare", "benchmark", "seeds", "EvaluationResult")

if TYPE_CHECKING:  # pragma: no cover
    from robust_uatt.api import (
        EvaluationResult,
        benchmark,
        compare,
        evaluate,
        evaluate_shard,
        list_attacks,
        list_models,
        list_suites,
        load_model,
        make_attack,
        security_curve,
        seeds,
        train,
    )


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module("robust_uatt.api"), name)
    raise AttributeError(f"module 'robust_uatt' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])


__all__ = ["__version__", "load_model", "list_models", "list_attacks", "list_suites", "make_attack", "evaluate",
           "evaluate_shard", "train", "security_curve", "compare", "benchmark", "seeds", "EvaluationResult"]
