"""DataConfig: a recipe's ``[data]`` table, validated from its fields."""

from __future__ import annotations

from dataclasses import dataclass

from robust_uatt.utils.config import setting


@dataclass
class DataConfig:
    augment: str = setting("none", str, choices=("none", "crop-flip"))
    holdout: int = setting(0, int, low=0)  # >0: validate on the last N training images; 0: on the test split
    canvas: int = setting(100, int, low=1)  # cluttered-mnist only
    pieces: int = setting(10, int, low=0)
    piece_size: int = setting(8, int, low=1)
    clutter_seed: int = setting(0, int, low=0)
