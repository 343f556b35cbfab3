"""`compare`: our results beside RobustBench rows of the same threat model only (dataset, norm, eps)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from robust_uatt.benchmark.compare import (
    compare,
    eps_equal,
    load_results,
    parse_result,
    read_leaderboard,
    threat_classes,
)
from robust_uatt.utils.eps import parse_eps_text
from robust_uatt.utils.errors import UserError
from tests.conftest import REPO

COLUMNS = ["model_id", "name", "architecture", "clean_acc", "autoattack_acc", "reported", "venue", "additional_data",
           "number_forward_passes", "eps", "unreliable", "external", "in_model_zoo", "dataset"]


def _real_board() -> Path:
    data = os.environ.get("ROBUST_UATT_DATA")
    for path in ([Path(data) / "robustbench"] if data else []) + [REPO.parent / "shared/data/robustbench"]:
        if (path / "cifar10_Linf.csv").is_file():
            return path
    pytest.skip("the RobustBench leaderboard CSVs are not here (../shared/data/robustbench)")


def _write_csv(path: Path, rows: list[dict[str, Any]], metric: str = "autoattack_acc") -> None:
    cols = [metric if c == "autoattack_acc" else c for c in COLUMNS]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for r in rows:
            w.writerow({"dataset": "cifar10", "unreliable": "False", **r})


def _row(model_id: str, arch: str, clean: str, robust: str, eps: str, metric: str = "autoattack_acc") -> dict:
    return {"model_id": model_id, "name": f"{model_id} paper", "architecture": arch, "clean_acc": clean,
            metric: robust, "eps": eps}


@pytest.fixture
def board(tmp_path: Path) -> Path:
    """Linf rows at 8/255 (one spelled 0.031, one name with a newline) and 4/255; L2 at 0.5; corruptions."""
    root = tmp_path / "board"
    root.mkdir()
    linf = [_row("Top", "WideResNet-70-16", "92.00", "70.00", "8/255"),
            _row("Mid", "WideResNet-28-10", "88.00", "60.00", "0.031"),
            {**_row("R18", "PreActResNet-18", "85.00", "50.00", "8/255"), "name": "multi\nline "},
            _row("Low", "WideResNet-34-10", "84.00", "40.00", "8/255"),
            _row("Standard", "WideResNet-28-10", "94.78", "0.00", "8/255"),
            _row("Small", "ResNet-50", "90.00", "65.00", "4/255")]
    _write_csv(root / "cifar10_Linf.csv", linf)
    _write_csv(root / "cifar10_L2.csv", [_row("L2a", "WideResNet-70-16", "95.00", "80.00", "0.5"),
                                         _row("Standard", "WideResNet-28-10", "94.78", "0.00", "0.5")])
    _write_csv(root / "cifar10_corruptions.csv", [_row("C1", "ResNet-18", "95.00", "90.00", "8/255",
                                                       metric="corruptions_acc")], metric="corruptions_acc")
    (root / "cifar10_corruptions_unaggregated_results.csv").write_text(",a\n,1\nC1,0.9\n")
    return root


def _result(norm: str = "Linf", eps: float | None = 8 / 255, eps_text: str = "8/255", robust: float = 0.55,
            **extra: Any) -> dict[str, Any]:
    return {"model": {"name": "cifar10-vgg"}, "attack": "pgd",
            "threat_model": {"norm": norm, "bounded": eps is not None, "eps": eps, "eps_text": eps_text},
            "clean_accuracy": 0.8, "robust_accuracy": robust, "n": 200,
            "data": {"dataset": "cifar10", "lossless_fraction": 1.0}, **extra}


def _ours(*results: dict[str, Any]) -> list:
    return [parse_result(r, f"r{i}/results.json") for i, r in enumerate(results)]


def test_eps_parsing_and_rounding_tolerance() -> None:
    assert parse_eps_text("8/255") == pytest.approx(8 / 255) and parse_eps_text(" 0.5 ") == 0.5
    assert parse_eps_text("") is None and parse_eps_text("null") is None and parse_eps_text("a/b") is None
    assert eps_equal(8 / 255, parse_eps_text("0.031"))  # RobustBench's 3-decimal spelling of 8/255
    assert not eps_equal(8 / 255, 0.03) and not eps_equal(8 / 255, 4 / 255) and not eps_equal(None, 0.5)


def test_real_leaderboard_is_read_whole() -> None:
    rows = read_leaderboard(_real_board())
    by_tm = {tm: [r for r in rows if r.threat_model == tm] for tm in ("Linf", "L2", "corruptions")}
    assert [len(v) for v in by_tm.values()] == [99, 21, 23] and len(rows) == 143  # unaggregated CSV skipped
    assert all("\n" not in r.name for r in rows)
    classes = threat_classes(rows)
    linf = [c for c in classes if c.norm == "Linf"]
    assert len(linf) == 1 and len(linf[0].rows) == 99 and linf[0].eps_text == "8/255"  # 0.031 rows merged in
    assert {c.label() for c in classes} == {"cifar10 Linf eps=8/255 (0.03137)", "cifar10 L2 eps=0.5",
                                            "cifar10 corruptions"}


def test_result_placed_among_real_linf_rows() -> None:
    rows = read_leaderboard(_real_board())
    report = compare(_ours(_result(robust=0.52)), rows, top=5)
    (c,) = report.comparisons
    assert (c.threat.norm, c.threat.eps_text) == ("Linf", "8/255") and not report.not_comparable
    assert {r.threat_model for r in c.ranked} == {"Linf"} and len(c.ranked) == 99
    higher = sum(1 for r in rows if r.threat_model == "Linf" and r.robust_acc_pct > 52.0)
    assert c.ours[0][1] == higher + 1
    assert c.shown["Standard"] == "undefended" and "ResNet-18 scale" in c.shown.values()
    assert sum(1 for why in c.shown.values() if why == "top") == 5


def test_0031_matches_8_255_and_other_eps_is_separate(board: Path) -> None:
    rows = read_leaderboard(board)
    report = compare(_ours(_result(eps=0.031, eps_text="0.031", robust=0.62), _result(eps=0.3, eps_text="0.3")),
                     rows)
    (c,) = report.comparisons
    assert [r.model_id for r in c.ranked] == ["Top", "Mid", "R18", "Low", "Standard"]  # not Small (4/255)
    assert c.ours[0][0].eps_text == "0.031" and c.ours[0][1] == 2  # 62%: below Top (70%), above Mid (60%)
    assert [e["model_id"] for e in c.excluded] == ["Small"] and c.excluded[0]["reason"] == "other eps"
    ((ours, reason),) = report.not_comparable
    assert ours.eps == 0.3 and reason.startswith("other eps") and "8/255" in reason
    out = report.to_json()
    assert out["not_comparable"][0]["robust_accuracy_fraction"] == 0.55
    assert out["comparisons"][0]["ours"][0]["robust_acc_pct"] == 62.0
    assert all("0.3" != r["eps_text"] for r in out["comparisons"][0]["leaderboard"])


def test_only_mismatched_threat_model_is_refused(board: Path) -> None:
    with pytest.raises(UserError) as e:
        compare(_ours(_result(eps=0.3, eps_text="0.3")), read_leaderboard(board))
    msg = str(e.value)
    assert "\n" not in msg and "Linf eps=0.3" in msg and "8/255" in msg and "L2 eps=0.5" in msg


def test_l2_never_mixed_with_linf(board: Path) -> None:
    rows = read_leaderboard(board)
    report = compare(_ours(_result("L2", 0.5, "0.5", robust=0.3), _result("Linf", 0.5, "0.5"),
                           _result("L2", 8 / 255, "8/255")), rows)
    (c,) = report.comparisons
    assert c.threat.norm == "L2" and [r.model_id for r in c.ranked] == ["L2a", "Standard"]
    assert c.ours[0][1] == 2 and not c.excluded
    reasons = [reason for _, reason in report.not_comparable]
    assert len(reasons) == 2 and all(r.startswith("other eps") for r in reasons)
    assert "corruptions" not in {r.threat_model for cmp in report.comparisons for r in cmp.ranked}


def test_other_norm_and_dataset_and_unbounded_are_not_comparable(board: Path) -> None:
    rows = read_leaderboard(board)
    other_data = _result()
    other_data["data"]["dataset"] = "mnist"
    report = compare(_ours(_result(), _result("L1", 8 / 255), other_data, _result(eps=None, eps_text="")), rows)
    reasons = [reason for _, reason in report.not_comparable]
    assert reasons[0].startswith("other norm") and reasons[1].startswith("other dataset")
    assert reasons[2].startswith("unbounded")


def test_invalid_result_is_flagged_never_ranked(board: Path) -> None:
    rows = read_leaderboard(board)
    bad_result = _result(robust=0.99, valid=False, invalid_reasons=["gradient check: zero gradients"],
                         suite={"name": "paper", "description": "..."})
    report = compare(_ours(_result(robust=0.5), bad_result), rows)
    (c,) = report.comparisons
    assert len(c.ours) == 1 and c.ours[0][0].valid
    ((bad, reason),) = report.not_comparable
    assert not bad.valid and "INVALID" in reason and "zero gradients" in reason and bad.label == "paper"
    assert report.to_json()["not_comparable"][0]["valid"] is False
    with pytest.raises(UserError, match="INVALID"):
        compare(_ours(_result(valid=False)), rows)


def test_model_info_tree(tmp_path: Path) -> None:
    root = tmp_path / "model_info" / "cifar10"
    for tm, mid, eps, acc in (("Linf", "A", "8/255", "55.5"), ("Linf", "B", "0.031", "45.0"), ("L2", "C", 0.5, 70)):
        (root / tm).mkdir(parents=True, exist_ok=True)
        (root / tm / f"{mid}.json").write_text(json.dumps({"name": mid, "architecture": "ResNet-18",
                                                           "clean_acc": "90.0", "autoattack_acc": acc, "eps": eps}))
    (tmp_path / "model_info" / "README.json").write_text("{}")  # not <dataset>/<threat>/<id>.json: ignored
    rows = read_leaderboard(tmp_path / "model_info")
    assert sorted((r.model_id, r.threat_model, r.robust_acc_pct) for r in rows) == [
        ("A", "Linf", 55.5), ("B", "Linf", 45.0), ("C", "L2", 70.0)]
    (c,) = compare(_ours(_result(robust=0.5)), rows).comparisons
    assert [r.model_id for r in c.ranked] == ["A", "B"] and c.ours[0][1] == 2


def test_model_argument_forms(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    for d in ("a", "b"):
        (runs / "attacks/cifar10-vgg" / d).mkdir(parents=True)
        (runs / "attacks/cifar10-vgg" / d / "results.json").write_text(json.dumps(_result()))
    one = runs / "attacks/cifar10-vgg/a"
    assert len(load_results(["cifar10-vgg"], runs)) == 2
    assert len(load_results([str(one), str(one / "results.json"), "cifar10-vgg"], runs)) == 2  # each file once
    with pytest.raises(UserError, match="no attack results for 'nope'"):
        load_results(["nope"], runs)
    (one / "results.json").write_text("{not json")
    bad = [r for r in load_results([str(one)], runs)]
    assert bad[0].problem and "unreadable" in bad[0].problem


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "robust_uatt", "compare", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def test_cli_end_to_end(board: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    for d, res in (("a", _result(robust=0.55)), ("b", _result(eps=0.3, eps_text="0.3"))):
        (runs / "attacks/cifar10-vgg" / d).mkdir(parents=True)
        (runs / "attacks/cifar10-vgg" / d / "results.json").write_text(json.dumps(res))
    out = _cli(["--model", "cifar10-vgg", "--runs-dir", str(runs), "--leaderboard", str(board)], tmp_path)
    assert out.returncode == 0, out.stderr
    written = Path(out.stdout.strip().splitlines()[-1])
    assert written.parent == runs / "compare" and written.suffix == ".json"
    report = json.loads(written.read_text())
    assert len(report["comparisons"]) == 1 and len(report["not_comparable"]) == 1
    assert "cifar10 Linf eps=8/255" in out.stdout and "not comparable" in out.stdout and "ours" in out.stdout

    only_bad = _cli(["--model", str(runs / "attacks/cifar10-vgg/b"), "--leaderboard", str(board),
                     "--out", str(tmp_path / "x.json")], tmp_path)
    assert only_bad.returncode == 2 and not (tmp_path / "x.json").exists()
    assert len(only_bad.stderr.strip().splitlines()) == 1 and "eps=0.3" in only_bad.stderr


def test_training_budget_is_shown_beside_our_rows(board: Path) -> None:
    """Every row of ours carries the training budget its results.json records (adversarial or clean, seed); a result
    without a robust-uatt recipe (RobustBench, factory) has none."""
    recipe = {"model": {"arch": "vgg16", "width": 0.5},
              "train": {"epochs": 15, "optimizer": "sgd", "schedule": "onecycle"},
              "adv": {"kind": "fgsm-rs", "eps": "8/255"}}
    defended = _result(model={"name": "cifar10-vgg-at", "recipe": recipe, "train_seed": 1})
    clean = _result(model={"name": "cifar10-vgg", "recipe": {**recipe, "adv": {}}, "train_seed": 0})
    bare = _result()
    ours = _ours(defended, clean, bare)
    assert ours[0].training == "width 0.5, 15 ep, sgd onecycle, fgsm-rs 8/255, seed 1"
    assert ours[1].training == "width 0.5, 15 ep, sgd onecycle, clean, seed 0"
    assert ours[2].training == ""
    assert ours[0].row_info()[0] == "pgd; trained: width 0.5, 15 ep, sgd onecycle, fgsm-rs 8/255, seed 1"
    assert ours[2].row_info()[0] == "pgd"
    report = compare(ours, read_leaderboard(board))
    assert report.to_json()["comparisons"][0]["ours"][0]["training"].startswith("width 0.5, 15 ep")
