"""Adversarial training (training/adversarial.py): it buys robustness on a toy problem where clean training has
none, resumes bit-identically, stops and restores on a collapse, and refuses bad settings before writing."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, safe_open
from torch import nn

import robust_uatt as ru
import robust_uatt.training.adversarial as adv_mod
import robust_uatt.training.loop as train_mod
from robust_uatt.models.registry import register_model
from robust_uatt.models.zoo import load_recipe
from robust_uatt.training.config import adv_settings
from robust_uatt.utils.errors import UserError
from robust_uatt.utils.runtime import resolve_device

EPS = 0.1
TOY = """
description = "toy: a robust 6x6 block and a faint non-robust shift of every other pixel, both giving the class"
dataset = "mnist"
[model]
arch = "mlp"
hidden = 64
layers = 1
[data]
holdout = 200
[train]
epochs = {epochs}
batch_size = 100
optimizer = "adam"
lr = 0.0003
weight_decay = 0.0
schedule = "constant"
checkpoint_every = {every}
{adv}
"""


def toy_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Classes 0 and 1 (28x28 uint8). A 6x6 block (200 vs 55) gives the class with a margin far beyond EPS; every
    other pixel is 30 -/+ 8 plus noise (std 4): perfectly predictive too, but within EPS, so an attack can flip it.
    Clean training leans on the faint pixels and has no robustness; adversarial training must use the block."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    sign = 2 * y - 1
    x = 30 + sign[:, None, None] * 8 + rng.normal(0, 4, (n, 28, 28))
    x[:, :6, :6] = np.where(sign > 0, 200, 55)[:, None, None]
    return np.clip(x, 0, 255).astype(np.uint8), y.astype(np.uint8)


@pytest.fixture(scope="module")
def toy_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("toy")
    for split, n, seed in (("train", 4200, 0), ("test", 400, 1)):
        x, y = toy_images(n, seed)
        np.savez(root / f"mnist_{split}.npz", x=x, y=y)
    return root


def _toy_recipe(tmp_path: Path, adv: dict | None = None, epochs: int = 5, every: int = 0):
    table = ""
    if adv:
        table = "[adv]\n" + "\n".join(f"{k} = {json.dumps(v)}" for k, v in adv.items())
    path = tmp_path / "toy.toml"
    path.write_text(TOY.format(epochs=epochs, every=every, adv=table))
    return load_recipe(str(path))


def _train(recipe, run_dir: Path, data_dir: Path, resume: bool = False) -> dict:
    return train_mod.train(recipe, run_dir, seed=1, device=resolve_device("cpu"), data_dir=str(data_dir),
                           resume=resume, download=False)


def _pgd_accuracy(run_dir: Path, data_dir: Path) -> float:
    model = ru.load_model(str(run_dir))
    x, y = toy_images(400, 1)
    xt = torch.tensor(x, dtype=torch.float32).div(255).unsqueeze(1)
    yt = torch.tensor(y, dtype=torch.long)
    x_adv = ru.make_attack("pgd-ce", eps=EPS, steps=20)(model, xt, yt)
    assert (x_adv - xt).abs().max() <= EPS + 1e-6
    with torch.no_grad():
        return float((model(x_adv).argmax(1) == yt).float().mean())


@pytest.fixture(scope="module")
def clean_toy_pgd(toy_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> float:
    tmp = tmp_path_factory.mktemp("clean")
    _train(_toy_recipe(tmp), tmp / "run", toy_dir)
    return _pgd_accuracy(tmp / "run", toy_dir)


# fgsm-rs and trades are not asserted here: on this toy their epoch-to-epoch outcome is chaotic (fast AT swung
# between 0.27 and 0.84 PGD accuracy with a change of floating-point summation order in the optimizer), so a
# threshold on them would test rounding, not learning; their mechanics are covered by the tests below.
@pytest.mark.parametrize("kind, extra", [("pgd", {"steps": 3})])
def test_adversarial_training_buys_pgd_accuracy_that_clean_training_lacks(
        tmp_path: Path, toy_dir: Path, clean_toy_pgd: float, kind: str, extra: dict) -> None:
    """Clean training: 100% clean, 0% under PGD-20 at EPS. Adversarial training (with its guard, as shipped): most
    of the test set survives the same attack. (On this toy, fast AT oscillates from epoch to epoch, as Wong et al.
    report for larger steps; the guard's best-epoch restore is part of what is tested.)"""
    adv = {"kind": kind, "eps": EPS, "guard_n": 200, "guard_steps": 5, **extra}
    card = _train(_toy_recipe(tmp_path, adv), tmp_path / "run", toy_dir)
    robust = _pgd_accuracy(tmp_path / "run", toy_dir)
    assert clean_toy_pgd < 0.1  # the clean model's accuracy rests on pixels an attack moves
    assert robust > clean_toy_pgd + 0.6, (kind, robust, clean_toy_pgd)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all({"train_adv_acc", "val_pgd_acc", "val_pgd_best"} <= set(r) for r in records)
    assert max(r["val_pgd_acc"] for r in records) > 0.8 and records[-1]["val_pgd_n"] == 200
    section = card["adversarial"]
    assert section["kind"] == kind and section["eps"] == EPS
    assert section["alpha"] == pytest.approx(1.25 * EPS if kind == "fgsm-rs" else EPS / 4)
    assert "adversarial inputs" in section["terms"] and card["recipe"]["adv"]["kind"] == kind


def _interrupt_at(monkeypatch: pytest.MonkeyPatch, step: int) -> None:
    real = train_mod.lr_at

    def lr_at(global_step: int, total: int, cfg: dict) -> float:
        if global_step == step:
            signal.raise_signal(signal.SIGINT)  # as Ctrl-C: the loop finishes this step, checkpoints, stops
        return real(global_step, total, cfg)

    monkeypatch.setattr(train_mod, "lr_at", lr_at)


ATTN = """
description = "tiny VGG16 + attention, fast adversarial training"
dataset = "cifar10"
[model]
arch = "uatt"
backbone = "vgg16"
vgg_width = 0.125
glimpses = 3
patch = 8
scales = 2
glimpse_net = "conv"
hidden = 32
glimpse_dim = 32
context_hidden = 32
top_down = true
[data]
augment = "crop-flip"
holdout = 100
[train]
epochs = 2
batch_size = 50
optimizer = "sgd"
lr = 0.02
schedule = "onecycle"
limit_train = 200
[adv]
kind = "{kind}"
eps = "8/255"
steps = 2
guard_n = 64
guard_steps = 3
"""


@pytest.mark.parametrize("kind", ["fgsm-rs", "trades"])
def test_attention_model_adversarial_resume_is_bit_identical(tmp_path: Path, data_dir: Path,
                                                            monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    """Killed mid-epoch (step 2 of 4) and resumed, the run ends with the same weights, best weights and metrics as
    an uninterrupted one: random starts, sampled locations and the exploration of the top-down learner replay."""
    path = tmp_path / "attn.toml"
    path.write_text(ATTN.format(kind=kind))
    recipe = load_recipe(str(path))
    _train(recipe, tmp_path / "straight", data_dir)
    _interrupt_at(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        _train(recipe, tmp_path / "resumed", data_dir)
    assert not (tmp_path / "resumed" / "model.safetensors").exists()
    monkeypatch.undo()
    _train(recipe, tmp_path / "resumed", data_dir, resume=True)
    for name in ("model.safetensors", "best.safetensors"):
        a, b = load_file(str(tmp_path / "straight" / name)), load_file(str(tmp_path / "resumed" / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name

    def strip(run: str) -> list[dict]:
        lines = (tmp_path / run / "metrics.jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(x).items() if k not in ("images_per_s", "epoch_seconds")} for x in lines]

    assert strip("straight") == strip("resumed") and len(strip("straight")) == 2
    assert {"loss_cls", "loss_q", "train_adv_acc", "val_pgd_acc"} <= set(strip("straight")[0])


def test_guard_restores_the_best_epoch_and_stops_on_a_planted_collapse(
        tmp_path: Path, toy_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    adv = {"kind": "fgsm-rs", "eps": EPS, "guard_n": 100, "guard_drop": 0.25}
    planted = iter([0.50, 0.60, 0.20, 0.70])  # epoch 3 collapses: 0.60 -> 0.20 is a drop of 0.40 > 0.25
    monkeypatch.setattr(adv_mod.OverfitGuard, "measure", lambda self, model: next(planted))
    card = _train(_toy_recipe(tmp_path, adv, epochs=4), tmp_path / "guarded", toy_dir)
    records = [json.loads(line) for line in (tmp_path / "guarded" / "metrics.jsonl").read_text().splitlines()]
    assert [r["val_pgd_acc"] for r in records] == [0.50, 0.60, 0.20]  # epoch 4 never ran
    assert records[-1]["guard"] == "collapse" and "guard" not in records[1]
    assert records[-1]["val_pgd_best"] == 0.60 and records[-1]["val_pgd_best_epoch"] == 2
    stopped = card["adversarial"]["stopped_early"]
    assert stopped == {"epoch": 3, "val_pgd_acc": 0.20, "restored_epoch": 2, "restored_val_pgd_acc": 0.60,
                       "guard_drop": 0.25}
    # the shipped weights are epoch 2's: the same as a run that stopped after 2 epochs (constant learning rate)
    monkeypatch.setattr(adv_mod.OverfitGuard, "measure", lambda self, model: 0.5)
    _train(_toy_recipe(tmp_path, {**adv, "guard_drop": 1.0}, epochs=2), tmp_path / "two", toy_dir)
    a = load_file(str(tmp_path / "guarded" / "model.safetensors"))
    b = load_file(str(tmp_path / "two" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with safe_open(str(tmp_path / "guarded" / "best.safetensors"), "pt") as f:
        assert json.loads(f.metadata()["epoch"]) == 2


def test_guard_stays_quiet_within_the_threshold(tmp_path: Path, toy_dir: Path, monkeypatch: pytest.MonkeyPatch):
    planted = iter([0.50, 0.60, 0.40, 0.45])  # a drop of 0.20 <= 0.25: not a collapse
    monkeypatch.setattr(adv_mod.OverfitGuard, "measure", lambda self, model: next(planted))
    card = _train(_toy_recipe(tmp_path, {"kind": "fgsm-rs", "eps": EPS, "guard_drop": 0.25}, epochs=4),
                  tmp_path / "run", toy_dir)
    assert card["adversarial"]["stopped_early"] is None
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 4


def test_training_attack_stays_in_the_ball_and_leaves_running_statistics_alone() -> None:
    from robust_uatt.models.vgg import VGG16

    model = VGG16(10, width=0.125).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    y = torch.arange(8)
    for kind in ("fgsm-rs", "pgd"):
        s = adv_settings({"kind": kind, "eps": "8/255", "steps": 2}, "test")
        x_adv = adv_mod.perturb(model, x, y, s, torch.Generator().manual_seed(1))
        assert (x_adv - x).abs().max() <= 8 / 255 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
        assert (x_adv != x).float().mean() > 0.5
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BN running averages and counters unmoved
    assert all(p.grad is None for p in model.parameters())  # the attack gives the parameters no gradient
    assert model.training


@register_model("test-detached")
def _build_detached(*, num_classes: int, in_channels: int, image_size: int, mean=None, std=None) -> nn.Module:
    """A model that never lets a gradient reach its input (it reads a detached copy)."""

    class Detached(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(in_channels * image_size * image_size, num_classes)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x.detach().flatten(1))

    return Detached()


def test_adv_on_a_model_without_a_gradient_path_or_without_a_holdout_is_refused(tmp_path: Path,
                                                                                 toy_dir: Path) -> None:
    path = tmp_path / "detached.toml"
    path.write_text(TOY.format(epochs=1, every=0, adv="").replace('arch = "mlp"\nhidden = 64\nlayers = 1',
                                                                   'arch = "test-detached"'))
    with pytest.raises(UserError, match="differentiable"):
        ru.train(str(path), out=tmp_path / "a", adv="fgsm-rs", data_dir=str(toy_dir), device="cpu")
    path.write_text(TOY.format(epochs=1, every=0, adv="").replace("holdout = 200", "holdout = 0"))
    with pytest.raises(UserError, match="hold-out"):
        ru.train(str(path), out=tmp_path / "b", adv="fgsm-rs", data_dir=str(toy_dir), device="cpu")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.mark.parametrize("args, message", [
    (["--adv", "fgsm"], "fgsm-rs"),
    (["--adv", "pgd", "--adv-eps", "2"], "[0, 1]"),
    (["--adv", "pgd", "--adv-eps=-1/255"], "eps"),
    (["--adv", "pgd", "--adv-alpha", "3"], "[0, 1]"),
    (["--adv", "pgd", "--adv-steps", "0"], "steps must be >= 1"),
    (["--adv", "pgd", "--adv-steps=-2"], "steps must be >= 1"),
    (["--adv", "trades", "--adv-beta=-1"], "beta must be >= 0"),
    (["--adv-eps", "8/255"], "--adv KIND"),
    (["--adv", "pgd", "--adv-guard-drop", "1.5"], "guard_drop must be in [0, 1]"),
])
def test_bad_adversarial_settings_are_one_line_and_exit_2(tmp_path: Path, data_dir: Path, capsys,
                                                          monkeypatch: pytest.MonkeyPatch, args: list[str],
                                                          message: str) -> None:
    from robust_uatt.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ROBUST_UATT_DATA", str(data_dir))
    assert main(["train", "mnist-cnn", "--preset", "smoke", "--out", "out", *args]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and message in err and "Traceback" not in err, err
    assert not (tmp_path / "out").exists()


def test_at_recipes_share_one_matched_adversarial_recipe() -> None:
    vgg, attn = load_recipe("cifar10-vgg-at"), load_recipe("cifar10-vgg-attn-at")
    assert vgg.adv == attn.adv and vgg.adv["kind"] == "fgsm-rs" and vgg.adv["eps"] == "8/255"
    assert vgg.train == attn.train and vgg.data == attn.data
    assert vgg.model["width"] == attn.model["vgg_width"] == 0.5
    assert attn.model["arch"] == "uatt" and attn.model["top_down"] is True  # the attention model, not a copy
    for preset in ("smoke",):
        a, b = load_recipe("cifar10-vgg-at", preset), load_recipe("cifar10-vgg-attn-at", preset)
        assert a.adv == b.adv and a.train == b.train


def test_at_recipe_trains_end_to_end_through_the_cli(run_cli, tmp_path: Path) -> None:
    r = run_cli("train", "cifar10-vgg-attn-at", "--preset", "smoke", "--epochs", "1", "--out", "run")
    assert r.returncode == 0, r.stderr
    card = json.loads((tmp_path / "run" / "model_card.json").read_text())
    assert card["adversarial"]["kind"] == "fgsm-rs" and card["adversarial"]["eps"] == pytest.approx(8 / 255)
    assert "val PGD" in r.stderr
    record = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert {"train_adv_acc", "val_pgd_acc", "loss_cls", "loss_reinforce"} <= set(record)
