"""TrainConfig and AdvConfig: a recipe's ``[train]`` and ``[adv]`` tables, validated from their fields."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from robust_uatt.utils.config import from_table, setting
from robust_uatt.utils.eps import parse_eps
from robust_uatt.utils.errors import UserError

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
    # model selection on the hold-out split (never the test split): "last" epoch, or "best-val" (the epoch with the
    # best validation accuracy; with patience P > 0, stop after P epochs without a new best)
    select: str = setting("last", str, choices=("last", "best-val"))
    patience: int = setting(0, int, low=0)


ADV_KINDS = ("fgsm-rs", "pgd", "trades")
EPS_TYPES = (str, int, float)


@dataclass
class AdvConfig:
    """A recipe's ``[adv]`` table (``--adv KIND --adv-eps ...`` on the command line): L-inf adversarial training.

    ``eps`` and ``alpha`` are radii in pixel units of [0, 1] images, as numbers or fractions ("8/255").
    ``alpha = "auto"``: 1.25 eps for fgsm-rs (Wong et al. 2020), eps/4 for pgd and trades (2/255 at 8/255, Madry
    et al., Zhang et al.). ``steps``: iterations of pgd and trades (fgsm-rs takes one step). ``beta``: TRADES weight
    of its KL term. The catastrophic-overfitting guard attacks the first ``guard_n`` hold-out images with PGD-CE
    (``guard_steps`` steps, alpha 2.5 eps/steps) after every epoch and stops the run, restoring the best epoch's
    weights, when that accuracy falls more than ``guard_drop`` (absolute) below its best.
    """

    kind: str = setting("fgsm-rs", str, choices=ADV_KINDS)
    eps: str | float = setting("8/255", EPS_TYPES)
    alpha: str | float = setting("auto", EPS_TYPES)
    steps: int = setting(10, int, low=1)
    beta: float = setting(6.0, NUMBER, low=0)
    guard_n: int = setting(512, int, low=1)
    guard_steps: int = setting(10, int, low=1)
    guard_drop: float = setting(0.2, NUMBER, low=0, high=1)


@dataclass(frozen=True)
class AdvSettings:
    """An [adv] table resolved to numbers: what the training attack and the guard use."""

    kind: str
    eps: float
    alpha: float
    steps: int  # iterations the training attack takes (1 for fgsm-rs)
    beta: float
    guard_n: int
    guard_steps: int
    guard_drop: float


def adv_settings(table: dict[str, Any], where: str) -> AdvSettings:
    """Validate an [adv] table (unknown keys, types, ranges, eps in [0, 1]) and resolve it; a UserError otherwise."""
    cfg = from_table(AdvConfig, table, where, "adv")
    eps = _radius(cfg.eps, where, "eps")
    if cfg.alpha == "auto":
        alpha = 1.25 * eps if cfg.kind == "fgsm-rs" else eps / 4
    else:
        alpha = _radius(cfg.alpha, where, "alpha")
    return AdvSettings(cfg.kind, eps, alpha, 1 if cfg.kind == "fgsm-rs" else cfg.steps, float(cfg.beta),
                       cfg.guard_n, cfg.guard_steps, float(cfg.guard_drop))


def _radius(value: str | float, where: str, key: str) -> float:
    """A radius from a recipe or the command line: a number, or text such as "8/255"; it must lie in [0, 1]."""
    if isinstance(value, str):
        try:
            return parse_eps(value)
        except UserError as e:
            raise UserError(f"{where}: [adv] {key}: {e}") from None
    if not 0 <= value <= 1:
        raise UserError(f"{where}: [adv] {key} must lie in [0, 1] (pixel units of [0, 1] images), got {value}")
    return float(value)


def adv_table(table: dict[str, Any], where: str) -> dict[str, Any]:
    """A validated [adv] table with every key filled in (what recipes, config.json and model cards hold)."""
    adv_settings(table, where)
    return asdict(from_table(AdvConfig, table, where, "adv"))
