from __future__ import annotations

import pytest
import torch
from torch import nn

from robust_uatt.attacks import ATTACKS, build_attack, get_attack
from robust_uatt.attacks.pgd import pgd
from robust_uatt.data.datasets import Split
from robust_uatt.evaluation.harness import frozen_parameters, run_suite, summarize
from robust_uatt.evaluation.selftest import fit_small_cnn
from robust_uatt.utils.eps import parse_eps
from robust_uatt.utils.errors import UserError
from tests.conftest import synthetic_images


@pytest.mark.parametrize("text, value", [("8/255", 8 / 255), ("0.3", 0.3), ("0", 0.0), ("1", 1.0),
                                         (" 2 / 255 ", 2 / 255), ("3e-2", 0.03), (".5", 0.5)])
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
    return fit_small_cnn(xs, ys, channels=8, steps=150), Split(xs[:64], ys[:64], "synthetic")


def _suite(model, data, names, eps, steps=10, cascade=True, batch_size=32, **kw):
    attacks = [build_attack(n, eps=eps, steps=steps if n != "fgsm" else None, seed=0, **kw) for n in names]
    return run_suite(model, attacks, data, batch_size=batch_size, device=torch.device("cpu"), cascade=cascade)


def test_eps_one_drives_the_model_to_zero(trained) -> None:
    model, data = trained
    res = summarize(_suite(model, data, ["pgd"], 1.0, steps=20))
    assert res["clean_accuracy"] > 0.9
    assert res["robust_accuracy"] == 0.0


@pytest.mark.parametrize("name", ["pgd", "pgd-ce", "fgsm"])
def test_eps_zero_equals_clean_accuracy(trained, name: str) -> None:
    model, data = trained
    out = _suite(model, data, [name], 0.0)
    assert torch.equal(out.robust_correct(), out.clean_correct) and summarize(out)["clean_accuracy"] > 0.9


@pytest.mark.parametrize("name", sorted(set(ATTACKS) - {"transfer", "autoattack"}))
def test_every_attack_stays_in_the_ball_and_never_beats_clean(trained, name: str) -> None:
    model, data = trained
    small = data.subset(slice(0, 16))
    steps = {"square": 50, "noise": 5, "fgsm": None}.get(name, 3)
    out = run_suite(model, [build_attack(name, eps=8 / 255, steps=steps, seed=0)], small, batch_size=16,
                    device=torch.device("cpu"))
    rec = out.records[0]
    assert not rec.violations
    assert not (out.robust_correct() & ~out.clean_correct).any()
    if ATTACKS[name].bounded:
        assert rec.max_linf <= 8 / 255 + 1e-6


def test_our_pgd_matches_torchattacks_pgd(trained) -> None:
    import torchattacks

    model, data = trained
    x, y = data.x[:32].float() / 255, data.y[:32]
    eps, alpha, steps = 4 / 255, 1 / 255, 7
    torch.manual_seed(11)
    theirs = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=steps, random_start=True)(x, y)
    torch.manual_seed(11)
    init = torch.empty_like(x).uniform_(-eps, eps)  # torchattacks' random start, same generator state
    with frozen_parameters(model):
        ours = pgd(model, x, y, eps=eps, alpha=alpha, steps=steps, init=init, early_stop=False, keep="last")
    assert torch.allclose(ours, theirs, atol=1e-6)


def test_cascade_equals_every_attack_on_every_point(trained) -> None:
    model, data = trained
    names = ["fgsm", "pgd-ce", "noise"]
    a = _suite(model, data, names, 0.2, steps=5, cascade=True)
    b = _suite(model, data, names, 0.2, steps=5, cascade=False)
    assert 0 < summarize(a)["robust_accuracy"] < summarize(a)["clean_accuracy"]
    assert torch.equal(a.robust_correct(), b.robust_correct())
    assert sum(len(r.attacked) for r in a.records) < sum(len(r.attacked) for r in b.records)  # the cascade saves work


def test_batch_consistency_and_inputs_untouched(trained) -> None:
    model, data = trained
    attack = build_attack("pgd-ce", eps=6 / 255, steps=5, seed=3)
    x, y = data.x.float() / 255, data.y
    before = x.clone()
    index = torch.arange(len(x))
    with frozen_parameters(model):
        whole = attack(model, x, y, index)
        single = torch.cat([attack(model, x[i:i + 1], y[i:i + 1], index[i:i + 1]) for i in (0, 5, 17)])
    assert torch.equal(x, before)
    assert torch.allclose(whole[[0, 5, 17]], single, atol=1e-6)


def test_frozen_parameters_restores_trainability(trained) -> None:
    model, data = trained
    with frozen_parameters(model):
        assert not any(p.requires_grad for p in model.parameters())
    assert all(p.requires_grad for p in model.parameters())


def test_passes_are_counted(trained) -> None:
    model, data = trained
    rec = _suite(model, data.subset(slice(0, 8)), ["pgd-ce"], 1 / 255, steps=4,
                 options={"early_stop": False, "random_start": False}).records[0]
    attacked = len(rec.attacked)
    assert rec.backwards == 4 * attacked and rec.forwards >= 4 * attacked


def test_unknown_attack_and_option_suggest() -> None:
    with pytest.raises(UserError, match="did you mean pgd"):
        get_attack("pdg")
    with pytest.raises(UserError, match="did you mean restarts"):
        build_attack("pgd-ce", eps=0.1, options={"restart": 2})
