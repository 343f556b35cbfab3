"""Shared by the benchmarks: interleaved timing (ratios measured in one run), a table, a JSON file."""

from __future__ import annotations

import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from robust_uatt.utils.runtime import versions


def race(fns: dict[str, Callable[[], None]], repeats: int, warmup: int = 2, best: bool = False) -> dict[str, float]:
    """Median (``best``: smallest) seconds per call of each function, calls interleaved (A, B, A, B, ...) so load
    drifts hit all alike. On a machine shared with other jobs the best of k is the steadier estimate of what the code
    costs: load only ever adds time."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - t0)
    return {k: min(v) if best else statistics.median(v) for k, v in times.items()}


def matmul_flops(device: torch.device, size: int = 2048) -> tuple[Callable[[], None], float]:
    """(one float32 size x size matmul, its FLOPs): the machine's practical peak when timed (best of k)."""
    a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)
    return (lambda: a @ b), 2.0 * size**3


def machine() -> dict[str, str | None]:
    return {"processor": platform.processor() or platform.machine(), "threads": str(torch.get_num_threads()),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def report(title: str, rows: list[dict], out: str | Path, meta: dict) -> None:
    table = Table(title=title)
    for key in rows[0]:
        table.add_column(key, justify="left" if isinstance(rows[0][key], str) else "right")
    for row in rows:
        table.add_row(*(f"{v:.3g}" if isinstance(v, float) else str(v) for v in row.values()))
    Console().print(table)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps({"title": title, "rows": rows, "machine": machine(), "versions": versions(),
                                     **meta}, indent=2) + "\n")
    print(f"wrote {out}")
