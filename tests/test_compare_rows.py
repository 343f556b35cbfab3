"""`compare` per row (issue 9, item 10): suite, AutoAttack implementation, n, checks level and lossless fraction
shown; rows not comparable with RobustBench's (fewer points, the port, unchecked) marked, UNCHECKED never ranked."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console

from robust_uatt.benchmark.compare import compare, parse_result, read_leaderboard, report_tables
from robust_uatt.utils.errors import UserError
from tests.test_compare import _row, _write_csv


@pytest.fixture
def board(tmp_path: Path) -> Path:
    _write_csv(tmp_path / "cifar10_Linf.csv", [_row("Top", "WideResNet-70-16", "92.00", "70.00", "8/255"),
                                               _row("Low", "WideResNet-34-10", "84.00", "40.00", "8/255")])
    return tmp_path


def _result(suite: str = "standard", n: int = 10_000, checks: str | None = "full", impl: str | None = "reference",
            lossless: float = 1.0, robust: float = 0.55, **extra) -> dict:
    attacks = [] if impl is None else [{"name": "autoattack", "implementation":
                                        "reference (pyautoattack)" if impl == "reference" else
                                        "torchattacks port (10 APGD steps, not the reference's 100)"}]
    res = {"model": {"name": f"m-{suite}-{n}-{checks}-{impl}"}, "suite": {"name": suite}, "attacks": attacks,
           "threat_model": {"norm": "Linf", "bounded": True, "eps": 8 / 255, "eps_text": "8/255"},
           "clean_accuracy": 0.8, "robust_accuracy": robust, "n": n, "valid": True,
           "data": {"dataset": "cifar10", "lossless_fraction": lossless}, **extra}
    if checks is not None:
        res["checks_level"] = checks
    return res


def _render(report) -> str:
    buffer = io.StringIO()
    for table in report_tables(report):
        Console(file=buffer, width=300).print(table)
    return buffer.getvalue()


def test_a_reference_full_checked_run_is_comparable_and_ranked(board: Path) -> None:
    report = compare([parse_result(_result(), "a/results.json")], read_leaderboard(board))
    ours = report.to_json()["comparisons"][0]["ours"][0]
    assert ours["comparable_with_robustbench"] and ours["not_comparable_because"] == []
    assert (ours["suite"], ours["autoattack_impl"], ours["n"], ours["checks_level"], ours["lossless_fraction"]) == \
        ("standard", "reference", 10_000, "full", 1.0)
    assert ours["rank"] == 2
    text = _render(report)
    assert "#2/3" in text and "NOT COMPARABLE" not in text and "AutoAttack" in text and "lossless" in text


@pytest.mark.parametrize("kw, why", [
    ({"n": 1000}, "n=1000 < the leaderboard's 10000 test images"),
    ({"impl": "port"}, "torchattacks' AutoAttack port"),
    ({"impl": None, "suite": "quick"}, "suite 'quick' is not AutoAttack"),
    ({"checks": None}, "checks level not recorded"),
    ({"lossless": 0.1}, "90.0% of the images are not the exact test images"),
    ({"autoattack_impl": "torchattacks port"}, "torchattacks' AutoAttack port"),  # the result's own field wins
])
def test_rows_that_differ_from_robustbench_are_marked_not_ranked_silently(board: Path, kw: dict, why: str) -> None:
    report = compare([parse_result(_result(**kw), "a/results.json")], read_leaderboard(board))
    ours = report.to_json()["comparisons"][0]["ours"][0]
    assert not ours["comparable_with_robustbench"]
    assert any(why in reason for reason in ours["not_comparable_because"]), ours["not_comparable_because"]
    text = _render(report)
    assert "(2/3)" in text and "#2/3" not in text and "NOT COMPARABLE" in text and why[:20] in text


def test_an_unchecked_run_is_never_ranked(board: Path) -> None:
    """It used to be placed among RobustBench's AutoAttack rows like any other (an FGSM run ranked 95th of 100)."""
    checked = parse_result(_result(n=200, impl=None, suite="quick"), "a/results.json")
    unchecked = parse_result(_result(n=32, impl=None, suite="fgsm", checks="none", robust=0.9), "b/results.json")
    report = compare([checked, unchecked], read_leaderboard(board))
    data = report.to_json()
    assert [o["model"] for o in data["comparisons"][0]["ours"]] == [checked.model]
    assert [o["model"] for o in data["not_comparable"]] == [unchecked.model]
    assert "UNCHECKED" in data["not_comparable"][0]["reason"]
    assert "UNCHECKED" in _render(report)
    verdict = parse_result({**_result(), "verdict": "UNCHECKED"}, "c/results.json")  # the verdict field, if present
    assert verdict.unchecked
    with pytest.raises(UserError, match="UNCHECKED"):
        compare([unchecked], read_leaderboard(board))
