from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import robust_uatt.training.loop as train_mod
from robust_uatt.models.zoo import load_recipe
from robust_uatt.utils.runtime import resolve_device

RECIPE = """
description = "tiny VGG on synthetic data"
dataset = "cifar10"
[model]
arch = "vgg16"
width = 0.125
[data]
augment = "{augment}"
[train]
epochs = {epochs}
batch_size = 50
optimizer = "adam"
lr = 0.003
weight_decay = 0.0
schedule = "constant"
limit_train = {limit}
checkpoint_every = {every}
"""


def _recipe(tmp_path: Path, epochs: int = 4, limit: int = 0, every: int = 0, augment: str = "crop-flip"):
    path = tmp_path / "tiny.toml"
    path.write_text(RECIPE.format(epochs=epochs, limit=limit, every=every, augment=augment))
    return load_recipe(str(path))


def _train(tmp_path: Path, name: str, data_dir: Path, resume: bool = False, **kw):
    return train_mod.train(_recipe(tmp_path, **kw), tmp_path / name, seed=1, device=resolve_device("cpu"),
                           data_dir=str(data_dir), resume=resume, download=False)


def test_training_learns_a_separable_set_and_writes_a_complete_run(tmp_path: Path, data_dir: Path) -> None:
    card = _train(tmp_path, "run", data_dir, epochs=4, augment="none")  # flips would swap the synthetic classes
    run = tmp_path / "run"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3, 4]
    assert records[-1]["train_loss"] < 0.6 * records[0]["train_loss"]
    assert card["accuracy"]["test"] > 0.5 and card["accuracy"]["test"] == pytest.approx(
        json.loads((run / "model_card.json").read_text())["accuracy"]["test"])
    assert {"train_source", "train_lossless_fraction", "test_lossless_fraction"} <= set(card["data"])
    assert card["seed"] == 1 and card["versions"]["torch"] == torch.__version__
    # lossless subset reported separately (the synthetic test split marks its first half lossless)
    assert card["accuracy"]["test_lossless_n"] == 100
    weights = load_file(str(run / "model.safetensors"))
    assert "classifier.1.weight" in weights
    assert not list(run.glob("*.tmp")) and not (run / ".lock").exists()


def _interrupt_at(monkeypatch: pytest.MonkeyPatch, step: int) -> None:
    real = train_mod.lr_at

    def lr_at(global_step: int, total: int, cfg: dict) -> float:
        if global_step == step:
            signal.raise_signal(signal.SIGINT)  # as Ctrl-C: the loop finishes this step, checkpoints, stops
        return real(global_step, total, cfg)

    monkeypatch.setattr(train_mod, "lr_at", lr_at)


@pytest.mark.parametrize("stop_step", [5, 12])  # inside epoch 1 (between checkpoints), exactly at an epoch end
def test_interrupt_then_resume_is_bit_identical(tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                                stop_step: int) -> None:
    kw = dict(epochs=2, limit=600, every=0)
    _train(tmp_path, "straight", data_dir, **kw)
    _interrupt_at(monkeypatch, stop_step)
    with pytest.raises(KeyboardInterrupt):
        _train(tmp_path, "resumed", data_dir, **kw)
    assert (tmp_path / "resumed" / "checkpoint.safetensors").exists()
    assert not (tmp_path / "resumed" / "model.safetensors").exists()
    monkeypatch.undo()
    _train(tmp_path, "resumed", data_dir, resume=True, **kw)
    a = load_file(str(tmp_path / "straight" / "model.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    la = (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()
    lb = (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()
    def strip(line: str) -> dict:
        return {k: v for k, v in json.loads(line).items() if k not in ("images_per_s", "epoch_seconds")}

    assert [strip(x) for x in la] == [strip(x) for x in lb]


def test_non_finite_loss_stops_with_the_step_number(tmp_path: Path, data_dir: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    real = train_mod.lr_at
    monkeypatch.setattr(train_mod, "lr_at", lambda s, t, c: float("nan") if s >= 13 else real(s, t, c))
    with pytest.raises(train_mod.TrainingDiverged, match="step 14"):
        _train(tmp_path, "nan", data_dir, epochs=2)
    tensors = load_file(str(tmp_path / "nan" / "checkpoint.safetensors"))  # epoch-1 checkpoint stays good
    assert all(torch.isfinite(v).all() for k, v in tensors.items() if v.is_floating_point())


def test_lr_schedules() -> None:
    cfg = {"lr": 1.0, "schedule": "onecycle", "warmup": 0.25}
    lrs = [train_mod.lr_at(s, 100, cfg) for s in range(100)]
    assert max(lrs) == pytest.approx(1.0) and lrs[0] < 0.1 and lrs[-1] < 0.02
    assert train_mod.lr_at(50, 100, {**cfg, "schedule": "cosine"}) == pytest.approx(0.5)
    assert train_mod.lr_at(99, 100, {**cfg, "schedule": "constant"}) == 1.0
