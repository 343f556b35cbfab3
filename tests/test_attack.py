from __future__ import annotations

import pytest
import torch
from torch import nn

from robust_uatt.attack import ATTACKS, get_attack
from robust_uatt.data import Split
from robust_uatt.errors import UserError
from robust_uatt.harness import frozen_parameters, parse_eps, run_attack, summarize
from tests.conftest import synthetic_images


@pytest.mark.parametrize("text, value", [("8/255", 8 / 255), ("0.3", 0.3), ("0", 0.0), ("1", 1.0), (" 2 / 255 ", 2 / 255),
                                         ("3e-2", 0.03), (".5", 0.5)])
def test_parse_eps(text: str, value: float) -> None:
    assert parse_eps(text) == pytest.approx(value)


@pytest.mark.parametrize("text", ["-0.1", "abc", "8/0", "1.5", "nan", "inf", "", "8//255", "1/2/3", "0x10"])
def test_parse_eps_rejects_junk(text: str) -> None:
    with pytest.raises(UserError):
        parse_eps(text)


@pytest.fixture(scope="module")
def trained() -> tuple[nn.Module, Split]:
    """A small conv net trained to ~100% on the separable synthetic set."""
    torch.manual_seed(0)
    x, y = synthetic_images(300, 32, 3, seed=5)
    xs = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
    ys = torch.from_numpy(y)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
                          nn.Linear(128, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        loss = nn.functional.cross_entropy(model(xs.float() / 255), ys)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return model, Split(xs[:64], ys[:64], "synthetic")


def _attack(model: nn.Module, data: Split, name: str, eps: float, steps: int = 10) -> dict:
    spec = get_attack(name)
    out = run_attack(model, spec, data, eps=eps, alpha=2.5 * eps / steps, steps=steps, batch_size=32, seed=0,
                     device=torch.device("cpu"))
    return {**summarize(out), "outcome": out}


def test_eps_one_drives_the_model_to_zero(trained) -> None:
    model, data = trained
    res = _attack(model, data, "pgd", 1.0, steps=20)
    assert res["clean_accuracy"] > 0.9
    assert res["robust_accuracy"] == 0.0


def test_eps_zero_equals_clean_accuracy(trained) -> None:
    model, data = trained
    res = _attack(model, data, "pgd", 0.0)
    assert res["robust_accuracy"] == res["clean_accuracy"] > 0.9
    assert torch.equal(res["outcome"].robust_correct, res["outcome"].clean_correct)


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_every_attack_runs_stays_in_the_ball_and_never_beats_clean(trained, name: str) -> None:
    model, data = trained
    small = data.subset(slice(0, 16))
    res = _attack(model, small, name, 8 / 255, steps=ATTACKS[name].default_steps if name == "fgsm" else 5)
    out = res["outcome"]
    assert not (out.robust_correct & ~out.clean_correct).any()
    if ATTACKS[name].bounded:
        assert res["max_linf"] <= 8 / 255 + 1e-6


def test_attack_is_deterministic_per_seed_and_leaves_parameters_trainable(trained) -> None:
    model, data = trained
    a = _attack(model, data, "pgd", 4 / 255)["outcome"].robust_correct
    b = _attack(model, data, "pgd", 4 / 255)["outcome"].robust_correct
    assert torch.equal(a, b)
    assert all(p.requires_grad for p in model.parameters())
    with frozen_parameters(model):
        assert not any(p.requires_grad for p in model.parameters())
    assert all(p.requires_grad for p in model.parameters())


def test_unknown_attack_suggests() -> None:
    with pytest.raises(UserError, match="did you mean pgd"):
        get_attack("pdg")
