"""Device choice, seeding and the version stamp written next to every result."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path

import numpy as np
import torch

from robust_uatt.errors import UserError


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


def seed_all(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def versions() -> dict[str, str | None]:
    import torchvision

    from robust_uatt import __version__

    try:
        import torchattacks

        ta = torchattacks.__version__
    except Exception:  # torchattacks is a dependency, but a version stamp must never fail a run
        ta = None
    return {
        "robust_uatt": __version__, "git_commit": _git_commit(), "python": platform.python_version(),
        "torch": torch.__version__, "torchvision": torchvision.__version__, "torchattacks": ta,
        "numpy": np.__version__, "platform": platform.platform(),
        "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "cpu_threads": str(torch.get_num_threads()),
    }
