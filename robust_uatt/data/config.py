"""DataConfig: a recipe's ``[data]`` table, validated from its fields."""

from __future__ import annotations

from dataclasses import dataclass

from robust_uatt.utils.config import setting


@dataclass
class DataConfig:
    augment: str = setting("none", str, choices=("none", "crop-flip"))
    holdout: int = setting(0, int, low=0)  # >0: validate on the last N training images; 0: on the test split
    canvas: int = setting(0, int, low=0)  # generated datasets: 0 = the dataset's own (cluttered 100, multi-digit 64)
    pieces: int = setting(10, int, low=0)  # cluttered-mnist
    piece_size: int = setting(8, int, low=1)
    clutter_seed: int = setting(0, int, low=0)
    crop: int = setting(54, int, low=8)  # multi-digit: the window cut from the canvas (random: train; central: test)
    min_digits: int = setting(1, int, low=1)
    max_digits: int = setting(5, int, low=1, high=9)  # labels per image = max_digits + 1 (the terminal)
    digits_seed: int = setting(0, int, low=0)  # multidigit-mnist layouts; SVHN's random training crops
    svhn_extra: bool = setting(False, bool)  # multidigit-svhn: also train on SVHN's extra split (the paper's protocol)
