"""One TOML reader for recipes, suites and ``--option`` values: the standard library's ``tomllib`` (Python >= 3.11)
or the ``tomli`` package it came from (Python 3.10; a dependency there)."""

from __future__ import annotations

import sys
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

TOMLDecodeError = tomllib.TOMLDecodeError


def loads(text: str) -> dict[str, Any]:
    return tomllib.loads(text)


def scalar(text: str) -> Any:
    """A value as TOML reads it (0.1, 3, true, "text", [1, 2]); bare text that is not TOML stays a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text
