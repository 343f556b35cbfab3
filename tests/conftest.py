"""Shared fixtures: tiny synthetic datasets written in the layouts the loader reads, and a CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import tests.hypothesis_profiles  # noqa: F401  (derandomized unless HYPOTHESIS_PROFILE=explore; always in CI)
from robust_uatt.evaluation.selftest import synthetic_squares

REPO = Path(__file__).resolve().parent.parent

synthetic_images = synthetic_squares  # the generator selftest also uses (robust_uatt.evaluation.selftest)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """cifar10_{train,test}.npz (with a lossless mask) and mnist_{train,test}.npz of synthetic data."""
    root = tmp_path_factory.mktemp("data")
    for split, n, seed in (("train", 600, 0), ("test", 200, 1)):
        x, y = synthetic_images(n, 32, 3, seed)
        lossless = np.arange(n) < n // 2
        np.savez(root / f"cifar10_{split}.npz", x=x, y=y.astype(np.uint8), lossless=lossless)
        # MNIST recipes hold out the paper's 6000 validation images, so the synthetic train split is larger
        x, y = synthetic_images(7000 if split == "train" else n, 28, 1, seed + 10)
        np.savez(root / f"mnist_{split}.npz", x=x, y=y)
    return root


@pytest.fixture
def run_cli(data_dir: Path, tmp_path: Path):
    """Run `python -m robust_uatt ARGS` in tmp_path with the synthetic data directory; returns CompletedProcess."""

    def run(*args: str, env: dict[str, str] | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
        full_env = {**os.environ, "ROBUST_UATT_DATA": str(data_dir), "PYTHONPATH": str(REPO),
                    "COLUMNS": "200",  # zoo names resolve to local runs only, whatever zoo/weights ships:
                    "ROBUST_UATT_SHIPPED": str(tmp_path / "no-shipped-weights"), **(env or {})}
        return subprocess.run([sys.executable, "-m", "robust_uatt", *args], cwd=tmp_path, env=full_env,
                              capture_output=True, text=True, timeout=timeout)

    return run


@pytest.fixture(autouse=True)
def _threads() -> None:
    torch.set_num_threads(1)  # tiny models: one thread is faster, and a busy 2-core machine hurts less
