"""The one exception type for user mistakes: the CLI prints its message on one line and exits with code 2."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(Exception):
    """Bad input from the user (names, numbers, files): never a traceback, always exit code 2."""


def unknown_name(kind: str, name: str, known: Iterable[str]) -> UserError:
    """A UserError for an unknown name that suggests the closest known ones."""
    known = sorted(known)
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return UserError(f"unknown {kind} '{name}'{hint} (known: {', '.join(known)})")
