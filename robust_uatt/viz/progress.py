"""One rich progress bar for training epochs and attack batches (transient: it leaves nothing in the log)."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def progress_bar(console: Console | None, *fields: str) -> Progress:
    """A bar with description, count, elapsed and remaining time; each of ``fields`` is a format string over the
    task's fields (e.g. ``"loss {task.fields[loss]:.4f}"``), shown between the count and the times."""
    columns: list[ProgressColumn] = [TextColumn("[bold]{task.description}"), BarColumn(),
                                     TextColumn("{task.completed}/{task.total}")]
    columns += [TextColumn(f) for f in fields]
    return Progress(*columns, TimeElapsedColumn(), TimeRemainingColumn(), console=console or Console(stderr=True),
                    transient=True)
