"""RobustBench models from a local model directory, offline. Most tests need the optional extra and skip without it."""

from __future__ import annotations

import argparse
from pathlib import Path
from types import ModuleType

import pytest
import torch

from robust_uatt.benchmark import robustbench_models
from robust_uatt.benchmark.robustbench_models import expected_weights, load_robustbench_model
from robust_uatt.utils import compat
from robust_uatt.utils.errors import UserError


def _robustbench() -> ModuleType:
    """robustbench through the compat bridge, or skip: CI without the extra skips cleanly."""
    try:
        return compat.import_robustbench()
    except UserError as e:
        pytest.skip(str(e))


def test_missing_weights_is_one_line_error_before_importing_robustbench(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    def must_not_import() -> None:
        raise AssertionError("robustbench imported before the weights file was checked")

    monkeypatch.setattr(robustbench_models, "import_robustbench", must_not_import)
    with pytest.raises(UserError) as e:
        load_robustbench_model("Standard", tmp_path)
    msg = str(e.value)
    assert "\n" not in msg and str(tmp_path / "cifar10" / "Linf" / "Standard.pt") in msg and "never downloads" in msg


@pytest.fixture(scope="module")
def standard_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    """robustbench's Standard (WideResNet-28-10), random init, saved as RobustBench files look: a state_dict with
    DataParallel's 'module.' prefixes."""
    rb = _robustbench()
    entry = rb.utils.all_models[rb.utils.BenchmarkDataset("cifar10")][rb.utils.ThreatModel("Linf")]["Standard"]
    torch.manual_seed(0)
    model = entry["model"]().eval()
    root = tmp_path_factory.mktemp("rb_models")
    path = expected_weights("Standard", root)
    path.parent.mkdir(parents=True)
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)
    return root, model


def test_loads_local_standard_offline(standard_dir: tuple[Path, torch.nn.Module],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    root, reference = standard_dir
    rb = _robustbench()

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("robustbench tried to download")

    monkeypatch.setattr(rb.utils.gdown, "download", no_network)
    model = load_robustbench_model("Standard", root)
    assert isinstance(model, torch.nn.Module) and not model.training
    x = torch.rand(2, 3, 32, 32)  # [0, 1] images: RobustBench models normalize inside
    with torch.no_grad():
        logits = model(x)
        assert logits.shape == (2, 10) and torch.allclose(logits, reference(x), atol=1e-5)
    assert rb.utils.download_gdrive_new.__name__ == "download_gdrive_new"  # the download guard was undone


def test_checkpoint_with_pickled_objects_is_refused(tmp_path: Path) -> None:
    _robustbench()
    path = expected_weights("Standard", tmp_path)
    path.parent.mkdir(parents=True)
    torch.save({"state_dict": {"w": torch.zeros(1)}, "args": argparse.Namespace(lr=0.1)}, path)
    with pytest.raises(UserError, match=r"weights_only=True.*argparse\.Namespace") as e:
        load_robustbench_model("Standard", tmp_path)
    assert "\n" not in str(e.value)


def test_unknown_model_and_wrong_architecture(tmp_path: Path) -> None:
    _robustbench()
    for name in ("NoSuchModel", "Standard"):
        path = expected_weights(name, tmp_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"w": torch.zeros(1)}, path)
    with pytest.raises(UserError, match="unknown RobustBench cifar10/Linf model 'NoSuchModel'"):
        load_robustbench_model("NoSuchModel", tmp_path)
    with pytest.raises(UserError, match="could not load Standard") as e:
        load_robustbench_model("Standard", tmp_path)
    assert "\n" not in str(e.value)
