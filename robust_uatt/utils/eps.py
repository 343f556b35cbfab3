"""Perturbation radii written as text: '8/255', '0.3', '0.031', '1e-3' (pixel units of images in [0, 1])."""

from __future__ import annotations

import math
import re
from typing import Any

from robust_uatt.utils.errors import UserError

EPS_MAX_CHARS = 64  # '8/255', '0.031372549': a longer radius is a typo or an attack on the parser
_EPS_RE = re.compile(r"^\s*(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?\s*(/\s*(\d+(\.\d*)?|\.\d+)\s*)?$")


def _value(text: str) -> float:
    """A non-negative number or fraction of two; ValueError for anything else (or longer than EPS_MAX_CHARS)."""
    if len(text) > EPS_MAX_CHARS or not _EPS_RE.match(text):
        raise ValueError(f"not a number or fraction: {text[:EPS_MAX_CHARS]!r}")
    num, _, den = text.partition("/")
    try:  # float, not Fraction: Fraction('1e99999999') computes 10**99999999 (minutes); float gives inf at once
        return float(num.strip()) / (float(den.strip()) if den else 1.0)
    except (ZeroDivisionError, OverflowError) as e:
        raise ValueError(f"{text!r}: {e}") from None


def parse_eps(text: str) -> float:
    """A radius the user typed (``--eps``, ``--alpha``) -> float in [0, 1]; anything else is a UserError."""
    if not isinstance(text, str) or len(text) > EPS_MAX_CHARS or not _EPS_RE.match(text):
        shown = text if isinstance(text, str) and len(text) <= EPS_MAX_CHARS else f"{str(text)[:EPS_MAX_CHARS]}..."
        raise UserError(f"cannot parse eps '{shown}' (use a number like 0.3 or a fraction like 8/255)")
    try:
        value = _value(text)
    except ValueError:
        raise UserError(f"cannot parse eps {text!r} (division by zero or out of range)") from None
    if not math.isfinite(value) or value < 0 or value > 1:
        raise UserError(f"eps must lie in [0, 1] (pixel units of [0,1] images), got {text} = {value:g}")
    return value


def parse_eps_text(value: Any) -> float | None:
    """A radius read from a file (leaderboard CSV, results.json): '8/255', '0.031', 0.5 -> float; empty, 'null' or
    unparsable -> None (the leaderboard leaves eps blank for some threat models)."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value) if math.isfinite(value) else None
    text = str(value).strip()
    if not text or text.lower() in ("null", "none", "nan"):
        return None
    try:
        out = _value(text)
    except ValueError:
        return None
    return out if math.isfinite(out) else None


__all__ = ["parse_eps", "parse_eps_text"]
