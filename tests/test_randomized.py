"""Randomized models (issue 9, item 8): majority judgements over k draws, EOT for Square and noise, and `curve`
with --policy/--eot/--judge-draws and the sanity checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from robust_uatt.attacks import build_attack
from robust_uatt.attacks.base import EOTLogits
from robust_uatt.data.datasets import Split
from robust_uatt.evaluation.harness import run_suite, summarize
from robust_uatt.evaluation.selftest import fit_small_cnn
from tests.conftest import synthetic_images

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def trained() -> tuple[nn.Module, Split]:
    torch.manual_seed(0)
    x, y = synthetic_images(120, 32, 3, seed=5)
    xs = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
    return fit_small_cnn(xs, torch.from_numpy(y), channels=8, steps=60), Split(xs[:16], torch.from_numpy(y)[:16],
                                                                                  "synthetic")


class Flaky(nn.Module):
    """Answers wrongly (logits negated) on every third pass, deterministically: one draw may say anything, a
    majority of 3 consecutive draws is always right."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.passes = 0

    def forward(self, x: Tensor) -> Tensor:
        self.passes += 1
        out = self.inner(x)
        return -out if self.passes % 3 == 0 else out


def _noise(model: nn.Module, data: Split, eot: int, draws: int) -> dict:
    attack = build_attack("noise", eps=1e-4, steps=2, seed=0, eot=eot)
    return summarize(run_suite(model, [attack], data, batch_size=4, device=CPU, draws=draws))


def test_one_draw_judges_a_randomized_model_by_chance(trained) -> None:
    model, data = trained
    truth = float((model(data.x.float() / 255).argmax(1) == data.y).float().mean())
    single = _noise(Flaky(model), data, eot=1, draws=1)
    assert single["clean_accuracy"] < truth or single["robust_accuracy"] < single["clean_accuracy"]


def test_majority_of_draws_judges_clean_and_adversarial(trained) -> None:
    """Clean pass, the noise attack's own verdicts (eot) and the harness's (draws): all by majority, so the
    flaky passes never count, and noise of 1e-4 breaks nothing."""
    model, data = trained
    truth = float((model(data.x.float() / 255).argmax(1) == data.y).float().mean())
    res = _noise(Flaky(model), data, eot=3, draws=3)
    assert res["clean_accuracy"] == pytest.approx(truth) and truth > 0.9
    assert res["robust_accuracy"] == res["clean_accuracy"]


def test_square_and_fab_query_the_eot_mean(trained) -> None:
    """Attacks without their own EOT see the mean logits of eot passes (EOTLogits), not one draw."""
    model, data = trained
    seen: list[type] = []

    class Spy(nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            return model(x)

    spy = Spy()
    original = EOTLogits.forward

    def record(self, x):
        seen.append(type(self))
        return original(self, x)

    EOTLogits.forward = record
    try:
        for name in ("square", "fab-t"):
            attack = build_attack(name, eps=8 / 255, steps=5, seed=0, eot=3)
            run_suite(spy, [attack], data.subset(slice(0, 4)), batch_size=4, device=CPU)
            assert seen, name
            seen.clear()
    finally:
        EOTLogits.forward = original
    x = data.x[:4].float() / 255
    assert torch.allclose(EOTLogits(Flaky(model), 3)(x), model(x) / 3, atol=1e-5)  # (z + z - z) / 3


# ----------------------------------------------------------------------------------------------------- the CLI
def _checkpoint(tmp_path: Path, name: str) -> Path:
    """An untrained zoo model saved as a robust-uatt checkpoint (the recipe in its header): no training needed."""
    from robust_uatt.models.zoo import create_model, load_recipe
    from robust_uatt.utils.files import save_tensors

    recipe = load_recipe(name, "smoke")
    torch.manual_seed(0)
    model = create_model(recipe)
    path = tmp_path / f"{name}.safetensors"
    save_tensors(path, model.state_dict(), {"recipe": recipe.to_dict()})
    return path


def _cli(data_dir: Path, *args: str) -> int:
    """The CLI in this process (no interpreter start-up): its exit code."""
    from robust_uatt.cli import main

    return main([*args, "--data-dir", str(data_dir), "--no-download"])


def test_curve_takes_policy_eot_and_runs_the_checks(data_dir: Path, tmp_path: Path) -> None:
    weights = _checkpoint(tmp_path, "mnist-uatt")
    code = _cli(data_dir, "curve", "--model", str(weights), "--eps", "0,0.1", "--attack", "pgd-ce", "--steps", "2",
                "--n", "8", "--policy", "sample", "--eot", "2", "--judge-draws", "3", "--out", str(tmp_path / "c"))
    assert code in (0, 4)  # 4: INVALID (an untrained model may fail a gating check)
    curve = json.loads((tmp_path / "c" / "curve.json").read_text())
    assert (curve["policy"], curve["eot"], curve["judge_draws"], curve["checks_level"]) == ("sample", 2, 3, "fast")
    names = {c["name"]: c["passed"] for c in curve["checks"]}
    assert names["eps 0.1: deterministic (5 passes)"] is None  # stochastic: reported, not gating
    assert any(n.startswith("eps 0: ") for n in names) and curve["valid"] == (code == 0)


def test_attack_records_the_judge_draws(data_dir: Path, tmp_path: Path) -> None:
    weights = _checkpoint(tmp_path, "mnist-uatt")
    code = _cli(data_dir, "attack", "--model", str(weights), "--attack", "noise", "--steps", "2", "--eps", "0.1",
                "--n", "8", "--policy", "sample", "--eot", "2", "--checks", "none", "--out", str(tmp_path / "a"))
    assert code == 0
    res = json.loads((tmp_path / "a" / "results.json").read_text())
    assert (res["policy"], res["eot"], res["judge_draws"]) == ("sample", 2, 9)


def test_sample_policy_on_a_model_without_one_is_refused(data_dir: Path, tmp_path: Path, capsys) -> None:
    weights = _checkpoint(tmp_path, "mnist-fc")
    out = str(tmp_path / "c")
    assert _cli(data_dir, "curve", "--model", str(weights), "--eps", "0.1", "--n", "4", "--policy", "sample",
                "--out", out) == 2
    assert "has no policy" in capsys.readouterr().err and not (tmp_path / "c" / "curve.json").exists()
    assert _cli(data_dir, "curve", "--model", str(weights), "--eps", "0.1", "--n", "4", "--judge-draws", "0",
                "--out", out) == 2
    assert "--judge-draws must be a positive integer" in capsys.readouterr().err
