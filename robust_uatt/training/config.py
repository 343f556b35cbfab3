"""TrainConfig: a recipe's ``[train]`` table, validated from its fields."""

from __future__ import annotations

from dataclasses import dataclass

from robust_uatt.utils.config import setting

NUMBER = (int, float)


@dataclass
class TrainConfig:
    epochs: int = setting(10, int, low=1)
    batch_size: int = setting(128, int, low=1)
    eval_batch_size: int = setting(500, int, low=1)
    optimizer: str = setting("sgd", str, choices=("sgd", "adam"))
    lr: float = setting(0.05, NUMBER, low=0, cap=1e3)  # > 0, checked with the recipe; 3.4e38 overflows float32
    momentum: float = setting(0.9, NUMBER, low=0, high=1)
    nesterov: bool = setting(True, bool)
    weight_decay: float = setting(5e-4, NUMBER, low=0, cap=1e3)
    # constant | cosine | onecycle (linear warm-up, then linear decay to 0)
    schedule: str = setting("onecycle", str, choices=("constant", "cosine", "onecycle"))
    warmup: float = setting(0.15, NUMBER, low=0, high=1)  # fraction of all steps for the one-cycle warm-up
    label_smoothing: float = setting(0.0, NUMBER, low=0, high=1)
    grad_clip: float = setting(0.0, NUMBER, low=0)  # 0 = off
    limit_train: int = setting(0, int, low=0)  # 0 = the whole training split; >0 = its first N images (smoke runs)
    limit_val: int = setting(0, int, low=0)  # 0 = the whole validation split
    limit_test: int = setting(0, int, low=0)  # 0 = the whole test split for the model card
    checkpoint_every: int = setting(0, int, low=0)  # also checkpoint every N steps inside an epoch (0 = epoch ends)
