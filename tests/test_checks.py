"""Every sanity check fires on its planted failure, and the healthy model passes (this is `robust-uatt selftest`)."""

from __future__ import annotations

import pytest
import torch

from robust_uatt.attacks import build_attack
from robust_uatt.attacks.base import Attack, Budget
from robust_uatt.attacks.pgd import PGDCE
from robust_uatt.evaluation.checks import check_budget, check_run, gate
from robust_uatt.evaluation.harness import run_suite
from robust_uatt.evaluation.selftest import BROKEN, evaluate, train_healthy


@pytest.fixture(scope="module")
def healthy():
    return train_healthy(0)


def test_healthy_model_passes_every_gating_check(healthy) -> None:
    model, data = healthy
    checks, _ = evaluate(model, data)
    valid, reasons = gate(checks)
    assert valid, reasons
    assert {c.name for c in checks} >= {"eval mode", "deterministic (5 passes)", "logits, not softmax",
                                         "input gradients", "eps = 0 gives clean", "eps = 1 breaks everything",
                                         "inputs in the eps-ball and [0,1]", "black-box <= white-box"}


@pytest.mark.parametrize("name, expected", [
    ("gradient killer", {"input gradients", "eps = 1 breaks everything"}),
    ("softmax on logits", {"logits, not softmax"}),
    ("8-level input quantization", {"input gradients"}),
    ("forward noise", {"deterministic (5 passes)"}),
])
def test_each_planted_failure_is_caught(healthy, name: str, expected: set[str]) -> None:
    model, data = healthy
    checks, _ = evaluate(BROKEN[name].wrap(model).eval(), data)
    failed = {c.name for c in checks if c.failed_gate()}
    assert expected <= failed


class _FlipsToTrain(Attack):
    name = "flips-to-train"
    description = "planted bug: leaves the model in train mode (as a careless attack library might)"

    def perturb(self, model, x, y, index):
        model.train()
        return x


def test_an_attack_that_flips_the_model_to_train_mode_is_reported_and_undone(healthy) -> None:
    model, data = healthy
    outcome = run_suite(model, [_FlipsToTrain(Budget(eps=0.1, alpha=0.1, steps=1))], data, batch_size=50,
                        device=torch.device("cpu"))
    assert not model.training and outcome.records[0].left_train_mode == 2  # restored before judging each batch
    checks = {c.name: c for c in check_run(outcome, [{"white_box": True}])}
    assert checks["attacks keep eval mode"].passed is False and checks["attacks keep eval mode"].gating


def test_a_model_in_train_mode_is_caught(healthy) -> None:
    from robust_uatt.evaluation.checks import check_model

    model, data = healthy
    try:
        model.train()
        checks = check_model(model, data, torch.ones(len(data), dtype=torch.bool), num_classes=10,
                             device=torch.device("cpu"), seed=0, stochastic=False)
    finally:
        model.eval()
    assert "eval mode" in {c.name for c in checks if c.failed_gate()}


def test_torchattacks_attacks_leave_the_model_in_eval_mode() -> None:
    """Regression: torchattacks restores "the model's mode" after attacking; the harness's wrapper must be in eval
    mode or the wrapped model ends in train mode (batch norm / dropout / sampled glimpses for the next attack)."""
    from torch import nn

    from robust_uatt.data.datasets import Split
    from robust_uatt.evaluation.selftest import synthetic_squares

    torch.manual_seed(0)
    x, y = synthetic_squares(40, 32, 3)
    data = Split(torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(y), "synthetic")
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Dropout(0.5), nn.Flatten(),
                          nn.LazyLinear(10))
    model(torch.rand(2, 3, 32, 32))
    model.eval()
    outcome = run_suite(model, [build_attack("apgd-ce", eps=0.1, steps=2), build_attack("pgd", eps=0.1, steps=2)],
                        data, batch_size=20, device=torch.device("cpu"), cascade=False)
    assert outcome.records[0].attacked and outcome.records[1].attacked  # the attacks really ran
    assert not model.training and all(r.left_train_mode == 0 for r in outcome.records)


class _OutsideBall(Attack):
    name = "outside"
    description = "planted bug: steps 2 eps"

    def perturb(self, model, x, y, index):
        return (x + 2 * self.budget.eps).clamp(0, 1)


def test_leaving_the_ball_is_caught_and_not_counted(healthy) -> None:
    model, data = healthy
    outcome = run_suite(model, [_OutsideBall(Budget(eps=0.1, alpha=0.1, steps=1))], data, batch_size=50,
                        device=torch.device("cpu"))
    assert outcome.records[0].violations and not outcome.records[0].broken
    assert not gate(check_run(outcome, [{"white_box": True}]))[0]


class _PlantedBlackBox(PGDCE):
    name = "planted-black-box"
    white_box = False  # a strong attack labelled black-box: it must not beat the (crippled) white-box one


def test_black_box_beating_white_box_is_caught(healthy) -> None:
    model, data = healthy
    weak = build_attack("pgd-ce", eps=0.3, steps=1, alpha=1e-6, seed=0, options={"random_start": False})
    strong = _PlantedBlackBox(Budget(eps=0.3, alpha=0.05, steps=10, options=PGDCE.options))
    outcome = run_suite(model, [weak, strong], data, batch_size=100, device=torch.device("cpu"))
    assert outcome.records[1].broken and not outcome.records[0].broken
    checks = check_run(outcome, [weak.describe(), strong.describe()])
    assert [c.name for c in checks if c.failed_gate()] == ["black-box <= white-box"]


def test_weak_budget_is_caught_by_the_full_checks(healthy) -> None:
    model, data = healthy
    weak = build_attack("pgd-ce", eps=0.4, steps=1, alpha=1e-3, seed=0, options={"random_start": False})
    outcome = run_suite(model, [weak], data, batch_size=100, device=torch.device("cpu"))
    checks = check_budget(model, data, outcome, eps=0.4, steps=1, eot=1, device=torch.device("cpu"), seed=0)
    assert {c.name for c in checks if c.failed_gate()} == {"doubling steps changes < 1 point", "monotone in eps"}


@pytest.mark.parametrize("black_only, n, passed", [(0, 200, True), (1, 200, True), (2, 1000, True),
                                                    (5, 200, False), (10, 1000, False), (3, 64, False)])
def test_black_box_limit_is_a_significance_test(black_only, n, passed) -> None:
    """One stray point of 200 is noise; a share whose 95% interval lies above 0.2% is masking evidence."""
    from robust_uatt.evaluation.checks import _black_box_check

    check = _black_box_check(black_only, n)
    assert check.passed is passed and check.gating
    assert f"{black_only} of {n} points" in check.detail
