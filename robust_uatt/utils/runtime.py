"""Device choice, seeding and the version stamp written next to every result."""

from __future__ import annotations

import functools
import os
import platform
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from robust_uatt.utils.errors import UserError


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' takes CUDA when present; asking for CUDA without one is a user error, not a crash."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError("--device cuda asked for, but no CUDA device is available (use --device auto or cpu)")
        return torch.device(name)
    raise UserError(f"unknown device '{name}' (auto, cpu or cuda)")


def configure(device: torch.device) -> None:
    """Per-device speed settings: cuDNN autotuning for the fixed shapes of training and attacks."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


@contextmanager
def deterministic(device: torch.device, enabled: bool | None = None) -> Iterator[None]:
    """``torch.use_deterministic_algorithms(True)`` for the duration, restored afterwards.

    ``enabled=None`` means: on for the CPU (free there, and what makes a resumed run bit-identical to an
    uninterrupted one), off for CUDA, where it costs speed (no cuDNN autotuning) and needs
    ``CUBLAS_WORKSPACE_CONFIG``, which this sets to ``:4096:8`` unless already set (it must be set before CUDA's
    first matmul: pass ``--deterministic`` from the start of a process). An op without a deterministic kernel
    warns instead of failing (``warn_only``).
    """
    on = device.type == "cpu" if enabled is None else enabled
    if not on:
        yield
        return
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
              torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = before[2], before[3]


def seed_all(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


@functools.cache
def _git_commit() -> str | None:
    """The commit of the checkout this package was imported from, read once per process: the code a long run executes
    is the code it loaded, so a commit made while it runs must not be stamped on its results (see pin_code_version)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def pin_code_version() -> None:
    """Read the checkout's commit now, at the start of a run, so that every `versions()` of this process reports it."""
    _git_commit()


def versions() -> dict[str, str | None]:
    import torchvision

    from robust_uatt._version import __version__

    try:
        import torchattacks

        ta = torchattacks.__version__
    except Exception:  # torchattacks is a dependency, but a version stamp must never fail a run
        ta = None
    try:
        from robust_uatt.utils.compat import autoattack_version

        reference_aa = autoattack_version()
    except Exception:  # optional: absent means torchattacks' port runs (and is labelled so)
        reference_aa = None
    return {
        "robust_uatt": __version__, "reference_autoattack": reference_aa, "git_commit": _git_commit(),
        "python": platform.python_version(),
        "torch": torch.__version__, "torchvision": torchvision.__version__, "torchattacks": ta,
        "numpy": np.__version__, "platform": platform.platform(),
        "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "cpu_threads": str(torch.get_num_threads()),
    }
