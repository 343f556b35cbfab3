"""95% Clopper-Pearson intervals (issue 9, item 9): the function, and where they are shown (results.json, the
tables, curve, compare)."""

from __future__ import annotations

import io

import pytest
import torch
from rich.console import Console

from robust_uatt.evaluation.harness import AttackRecord, SuiteOutcome, summarize
from robust_uatt.evaluation.intervals import clopper_pearson, interval


def test_known_values() -> None:
    assert clopper_pearson(0, 10) == pytest.approx((0.0, 1 - 0.025 ** (1 / 10)))
    assert clopper_pearson(10, 10) == pytest.approx((0.025 ** (1 / 10), 1.0))
    assert clopper_pearson(5, 10) == pytest.approx((0.187086, 0.812914), abs=1e-6)  # R: binom.test(5, 10)
    lo, hi = clopper_pearson(500, 1000)
    assert lo == pytest.approx(0.468549, abs=1e-6) and hi == pytest.approx(0.531451, abs=1e-6)  # ~ +-3.2 points
    assert clopper_pearson(0, 0) == (0.0, 1.0)
    assert interval(0.5, 1000) == pytest.approx([lo, hi]) and interval(None, 10) is None


def test_interval_always_holds_the_estimate_and_narrows_with_n() -> None:
    for n in (1, 7, 100):
        for k in range(n + 1):
            lo, hi = clopper_pearson(k, n)
            assert 0 <= lo <= k / n <= hi <= 1
    assert clopper_pearson(900, 1000)[1] - clopper_pearson(900, 1000)[0] < clopper_pearson(90, 100)[1] - \
        clopper_pearson(90, 100)[0]


def _outcome() -> SuiteOutcome:
    clean = torch.tensor([True] * 80 + [False] * 20)
    rec = AttackRecord(info={"name": "pgd-ce", "eot": 1, "steps": 10, "steps_meaning": "iterations"},
                       attacked=list(range(80)), broken=list(range(30)))
    return SuiteOutcome(clean, [rec])


def test_results_carry_intervals_for_clean_robust_every_row_and_the_paper_protocol() -> None:
    res = summarize(_outcome(), paper_attack="pgd-ce")
    assert res["clean_accuracy_ci"] == pytest.approx(list(clopper_pearson(80, 100)))
    assert res["robust_accuracy_ci"] == pytest.approx(list(clopper_pearson(50, 100)))
    assert res["attacks"][0]["robust_accuracy_after_ci"] == pytest.approx(list(clopper_pearson(50, 100)))
    assert res["paper_protocol_accuracy_ci"] == pytest.approx(list(clopper_pearson(50, 100)))
    assert res["confidence_interval"]["level"] == 0.95


def _result() -> dict:
    res = summarize(_outcome(), paper_attack="pgd-ce")
    res["attacks"][0].update(seconds=1.0, forward_passes=1, backward_passes=1)
    return {**res, "valid": True, "invalid_reasons": [], "model": {"name": "m", "weights": "w"},
            "suite": {"name": "s"}, "policy": "mean", "seed": 0, "device": "cpu", "command": "c",
            "threat_model": {"norm": "Linf", "bounded": True, "eps": 8 / 255, "eps_text": "8/255",
                             "eps_units": "pixel [0,1]"},
            "data": {"lossless_fraction": 1.0},
            "versions": {"torch": "t", "torchattacks": "ta", "robust_uatt": "r", "git_commit": "g"}}


def test_the_attack_table_and_results_md_print_the_intervals() -> None:
    from robust_uatt.viz.tables import attack_markdown, attack_table

    lo, hi = clopper_pearson(50, 100)
    text = f"[{100 * lo:.1f}, {100 * hi:.1f}]"
    clean = "[{:.1f}, {:.1f}]".format(*(100 * v for v in clopper_pearson(80, 100)))
    buffer = io.StringIO()
    Console(file=buffer, width=200).print(attack_table(_result()))
    assert text in buffer.getvalue() and clean in buffer.getvalue() and "95% CI" in buffer.getvalue()
    md = attack_markdown(_result())
    assert text in md and clean in md and "Clopper-Pearson" in md


def test_security_curve_has_intervals_at_every_eps() -> None:
    from robust_uatt import api
    from robust_uatt.evaluation.selftest import fit_small_cnn
    from tests.conftest import synthetic_images

    torch.manual_seed(0)
    x, y = synthetic_images(120, 32, 3, seed=5)
    xs, ys = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(y)
    model = fit_small_cnn(xs, ys, channels=8, steps=60)
    curve = api.security_curve(model, xs[:20], ys[:20], eps=[0.0, 0.3], attacks=["fgsm"], checks="none",
                               batch_size=20, device="cpu")
    assert len(curve["robust_accuracy_ci"]) == 2
    for acc, (lo, hi) in zip(curve["robust_accuracy"], curve["robust_accuracy_ci"]):
        assert lo <= acc <= hi and (lo, hi) == pytest.approx(clopper_pearson(round(acc * 20), 20))
    assert curve["clean_accuracy_ci"] == pytest.approx(list(clopper_pearson(round(curve["clean_accuracy"] * 20), 20)))


def test_compare_shows_our_intervals(tmp_path) -> None:
    from robust_uatt.benchmark.compare import compare, parse_result, read_leaderboard, report_tables
    from tests.test_compare import _result, _row, _write_csv

    _write_csv(tmp_path / "cifar10_Linf.csv", [_row("Top", "WideResNet-70-16", "92.00", "70.00", "8/255")])
    ours = [parse_result(_result(robust=0.55), "a/results.json")]  # n = 200, no stored interval: computed
    report = compare(ours, read_leaderboard(tmp_path))
    row = report.to_json()["comparisons"][0]["ours"][0]
    lo, hi = clopper_pearson(110, 200)
    assert row["robust_acc_ci_pct"] == pytest.approx([100 * lo, 100 * hi], abs=1e-3)
    buffer = io.StringIO()
    for table in report_tables(report):
        Console(file=buffer, width=250).print(table)
    assert f"[{100 * lo:.1f}, {100 * hi:.1f}]" in buffer.getvalue()
