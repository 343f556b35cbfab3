"""The one exception type for user mistakes: the CLI prints its message on one line and exits with code 2."""

from __future__ import annotations

import difflib
import errno
import unicodedata
from collections.abc import Iterable


class UserError(Exception):
    """Bad input from the user (names, numbers, files): never a traceback, always exit code 2."""


def printable(text: object) -> str:
    """``text`` with control, format and line/paragraph-separator characters written as escapes (\\n, \\x1b,
    \\u202e): a value echoed from user input or a file can neither break a one-line message nor drive the terminal."""
    out = []
    for ch in str(text):
        if unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp"):
            out.append(ch.encode("unicode_escape").decode("ascii"))
        else:
            out.append(ch)
    return "".join(out)


def unknown_name(kind: str, name: str, known: Iterable[str]) -> UserError:
    """A UserError for an unknown name that suggests the closest known ones."""
    known = sorted(known)
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return UserError(f"unknown {kind} '{name}'{hint} (known: {', '.join(known)})")


# OSErrors that come from the user's environment (paths, permissions, space), not from a bug: the CLI reports them
# on one line with exit code 2. Any other OSError is left to show its traceback.
ENVIRONMENT_ERRNOS = frozenset(
    getattr(errno, name) for name in ("ENOSPC", "EDQUOT", "EFBIG", "EROFS", "EACCES", "EPERM", "EIO", "ENOENT",
                                      "ENOTDIR", "EISDIR", "EEXIST", "ENAMETOOLONG", "ELOOP", "EMFILE", "ENFILE")
    if hasattr(errno, name))


def environment_error(e: OSError) -> str | None:
    """One line for an OSError caused by the environment (full disk, read-only or missing folder), else None."""
    if e.errno not in ENVIRONMENT_ERRNOS:
        return None
    what = e.strerror or str(e)
    where = f"{e.filename}: " if e.filename else ""
    hint = ""
    if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        hint = " (free some space; files written before are intact)"
    elif e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        hint = " (choose a writable --out / --runs-dir)"
    return f"{where}{what}{hint}"
