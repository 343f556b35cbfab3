"""Config dataclasses validated from their fields: each field carries its kind, bounds and choices, so one function
checks a recipe table against it (unknown keys, wrong types, out-of-range numbers: a UserError naming file and key).
"""

from __future__ import annotations

import math
from dataclasses import Field, field, fields
from typing import Any, TypeVar

from robust_uatt.utils.errors import UserError, unknown_name

T = TypeVar("T")
Kind = type | tuple[type, ...]


def setting(default: Any, kind: Kind, *, low: float | None = None, high: float | None = None,
            choices: tuple[str, ...] | None = None, cap: float | None = None) -> Any:
    """A config field: its default, accepted type(s), inclusive bounds for numbers, allowed strings, and a sanity
    ``cap`` (an upper limit no sensible value reaches, e.g. where torch's float32 arithmetic would overflow)."""
    return field(default=default, metadata={"kind": kind, "low": low, "high": high, "choices": choices, "cap": cap})


def schema(cls: type) -> dict[str, tuple[Kind, Any]]:
    """{key: (accepted types, default)} of a config dataclass."""
    return {f.name: (f.metadata["kind"], f.default) for f in fields(cls)}


def from_table(cls: type[T], table: Any, where: str, section: str) -> T:
    """Build ``cls`` from a recipe table, checking every key against the field of that name."""
    if not isinstance(table, dict):
        raise UserError(f"{where}: [{section}] must be a table")
    known = {f.name: f for f in fields(cls)}  # type: ignore[arg-type]
    for key, value in table.items():
        if key not in known:
            raise unknown_name(f"key in [{section}] of {where}:", key, known)
        _check(known[key], value, where, section)
    return cls(**table)


def _check(f: Field, value: Any, where: str, section: str) -> None:
    kind, low, high, choices = (f.metadata[k] for k in ("kind", "low", "high", "choices"))
    kinds = kind if isinstance(kind, tuple) else (kind,)
    name = " or ".join(t.__name__ for t in kinds)
    if isinstance(value, bool) and bool not in kinds:
        raise UserError(f"{where}: [{section}] {f.name} must be {name}, got a boolean")
    if not isinstance(value, kind):
        raise UserError(f"{where}: [{section}] {f.name} must be {name}, got {type(value).__name__}")
    if isinstance(value, float) and not math.isfinite(value):
        raise UserError(f"{where}: [{section}] {f.name} must be a finite number, got {value}")
    if isinstance(value, (int, float)) and not isinstance(value, bool) and (
            (low is not None and value < low) or (high is not None and value > high)):
        bounds = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise UserError(f"{where}: [{section}] {f.name} must be {bounds}, got {value}")
    if choices is not None and value not in choices:
        raise unknown_name(f"[{section}] {f.name} in {where}:", value, choices)
    cap = f.metadata.get("cap")
    if cap is not None and value > cap:
        raise UserError(f"{where}: [{section}] {f.name} must be <= {cap:g} (larger values overflow the optimizer's "
                        f"float32 arithmetic), got {value}")


__all__ = ["setting", "schema", "from_table"]
