"""Architectures by name, registered where they are defined (in the spirit of timm's ``@register_model``).

A builder takes keyword options only: ``num_classes``, ``in_channels``, ``image_size``, ``mean`` and ``std`` come
from the dataset, every other keyword from a recipe's ``[model]`` table (checked against the builder's signature).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import TypeVar

from torch import nn

Builder = Callable[..., nn.Module]
B = TypeVar("B", bound=Builder)

MODELS: dict[str, Builder] = {}
CONFIGS: dict[str, type] = {}  # architecture -> its config dataclass, where it has one
# From the dataset, never from a recipe; ``positions`` (labels per image) only for sequence models and datasets.
DATASET_KEYWORDS = frozenset({"num_classes", "in_channels", "image_size", "mean", "std", "positions"})


def register_model(name: str, config: type | None = None) -> Callable[[B], B]:
    """Decorator: make ``builder`` available to recipes as ``[model] arch = "<name>"``."""

    def add(builder: B) -> B:
        if name in MODELS:
            raise ValueError(f"model architecture '{name}' is registered twice")
        MODELS[name] = builder
        if config is not None:
            CONFIGS[name] = config
        return builder

    return add


def builder_params(arch: str) -> dict[str, inspect.Parameter]:
    """The keyword options a recipe's [model] table may set for ``arch``."""
    return {k: p for k, p in inspect.signature(MODELS[arch]).parameters.items() if k not in DATASET_KEYWORDS}


def predicts_sequences(arch: str) -> bool:
    """Whether ``arch`` reads label sequences (its builder takes ``positions``, injected from the dataset)."""
    return "positions" in inspect.signature(MODELS[arch]).parameters


def list_architectures() -> list[str]:
    return sorted(MODELS)


__all__ = ["MODELS", "CONFIGS", "register_model", "builder_params", "predicts_sequences", "list_architectures"]
