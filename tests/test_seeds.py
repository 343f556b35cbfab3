"""Mean and spread over training seeds (robust-uatt seeds / api.seeds): grouping, arithmetic, refusals, CLI."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
import torch

from robust_uatt import api
from robust_uatt.cli import main
from robust_uatt.evaluation.results import EvaluationResult
from robust_uatt.utils.errors import UserError
from robust_uatt.utils.files import save_tensors, write_json


def _result(name: str, seed: int | None, clean: float, robust: float, *, eps: str = "8/255", n: int = 1000,
            paper: float | None = 0.5, valid: bool = True) -> EvaluationResult:
    model = {"name": name, "preset": "matched", "kind": "robust-uatt"}
    if seed is not None:
        model["train_seed"] = seed
    return EvaluationResult(model=model, suite={"name": "study"}, attack="study",
                            threat_model={"norm": "Linf", "eps": 8 / 255, "eps_text": eps}, n=n,
                            clean_accuracy=clean, robust_accuracy=robust, paper_protocol_accuracy=paper,
                            valid=valid, verdict="valid" if valid else "INVALID", checks_level="fast",
                            data={"dataset": "cifar10", "first_n": n})


def test_groups_by_model_and_eps_with_mean_and_sample_spread() -> None:
    rs = [_result("vgg", 0, 0.80, 0.10), _result("vgg", 1, 0.84, 0.14), _result("attn", 0, 0.78, 0.05),
          _result("vgg", 0, 0.80, 0.30, eps="1/255")]
    groups = api.seeds(rs)
    assert [(g.model, g.eps_text, len(g.results)) for g in groups] == [("vgg", "8/255", 2), ("attn", "8/255", 1),
                                                                       ("vgg", "1/255", 1)]
    vgg = groups[0].to_json()
    assert vgg["training_seeds"] == [0, 1] and vgg["status"] == "valid"
    assert vgg["clean"]["mean"] == pytest.approx(0.82)
    assert vgg["clean"]["std"] == pytest.approx(statistics.stdev([0.80, 0.84]))
    assert vgg["worst_case"]["min"] == pytest.approx(0.10) and vgg["worst_case"]["max"] == pytest.approx(0.14)
    lo, hi = vgg["worst_case"]["seeds"][0]["ci95"]
    assert lo < 0.10 < hi and vgg["worst_case"]["seeds"][0]["n"] == 1000
    assert groups[1].to_json()["clean"]["std"] is None  # one seed: no spread, never a made-up one


def test_an_invalid_seed_marks_its_row() -> None:
    groups = api.seeds([_result("vgg", 0, 0.8, 0.1), _result("vgg", 1, 0.8, 0.1, valid=False)])
    assert groups[0].status == "INVALID/valid"


@pytest.mark.parametrize("second, why", [(_result("vgg", 0, 0.7, 0.1), "seed 0 appears twice"),
                                         (_result("vgg", 1, 0.7, 0.1, n=500), "different test points"),
                                         (_result("vgg", None, 0.7, 0.1), "training seed")])
def test_refuses_what_would_not_be_a_spread_over_seeds(second: EvaluationResult, why: str) -> None:
    with pytest.raises(UserError, match=why):
        api.seeds([_result("vgg", 0, 0.8, 0.1), second])


def test_cli_writes_json_and_markdown(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for seed, clean in ((0, 0.8), (1, 0.9)):
        (tmp_path / f"s{seed}").mkdir()
        write_json(tmp_path / f"s{seed}" / "results.json", _result("vgg|x", seed, clean, 0.2).to_json())
    assert main(["seeds", str(tmp_path / "s0"), str(tmp_path / "s1"), "--out", str(tmp_path / "agg")]) == 0
    report = json.loads((tmp_path / "agg" / "seeds.json").read_text())
    assert report["command"] == f"robust-uatt seeds {tmp_path / 's0'} {tmp_path / 's1'} --out {tmp_path / 'agg'}"
    rows = report["rows"]
    assert rows[0]["clean"]["mean"] == pytest.approx(0.85) and rows[0]["training_seeds"] == [0, 1]
    md = (tmp_path / "agg" / "seeds.md").read_text()
    assert "| vgg\\|x | matched | study | 8/255 | 1000 | 2 | 85.00 ± 7.07 |" in md
    assert "85.00 ± 7.07" in capsys.readouterr().out


def test_cli_bad_input_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "results.json").write_text("{not json")
    assert main(["seeds", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("robust-uatt: error:") and "not valid JSON" in err[0]


def test_load_model_records_the_training_seed(tmp_path: Path) -> None:
    save_tensors(tmp_path / "w.safetensors", {"a": torch.zeros(1)}, {"seed": 7})
    assert api._train_seed(tmp_path / "w.safetensors") == 7
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 3)
    assert api._train_seed(tmp_path / "bad.safetensors") is None


def _fake_run(runs: Path, name: str, stamp: str, seed: int, acc: float, n: int = 10000, preset: str | None = None,
              finished: bool = True) -> None:
    run = runs / name / stamp
    run.mkdir(parents=True)
    write_json(run / "model_card.json", {"accuracy": {"test": acc}, "data": {"test_n": n}, "seed": seed,
                                         "preset": preset, "epochs": 100, "epochs_run": 40,
                                         "selection": {"best_epoch": 30}, "command": "robust-uatt train",
                                         "versions": {"commit": "abc"}})
    if finished:
        (run / "model.safetensors").write_bytes(b"")


def test_paper_table_sets_each_paper_row_beside_our_seeds(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs = tmp_path / "runs"
    _fake_run(runs, "mnist-ram", "a", 0, 0.9890)
    _fake_run(runs, "mnist-ram", "b", 1, 0.9880)
    _fake_run(runs, "mnist-ram", "c", 2, 0.5, finished=False)  # unfinished: left out
    _fake_run(runs, "mnist-fc", "a", 0, 0.98, preset="cpu")
    report = api.paper_table(1, runs_dir=runs)
    rows = {r["recipe"]: r for r in report["rows"]}
    assert len(rows) == 6 and rows["mnist-ram"]["paper_error"] == pytest.approx(0.0112)
    ram = rows["mnist-ram"]
    assert ram["n_seeds"] == 2 and ram["error_mean"] == pytest.approx(0.0115)
    assert ram["error_std"] == pytest.approx(statistics.stdev([0.011, 0.012]))
    assert ram["seeds"][0]["wrong"] == 110 and ram["seeds"][0]["ci95"][0] < 0.011 < ram["seeds"][0]["ci95"][1]
    assert rows["mnist-uatt"]["n_seeds"] == 0 and rows["mnist-uatt"]["error_mean"] is None
    assert api.paper_table(1, runs_dir=runs, preset="cpu")["rows"][0]["n_seeds"] in (0, 1)
    by_preset = {p: {r["recipe"]: r["n_seeds"] for r in api.paper_table(1, runs_dir=runs, preset=p)["rows"]}
                 for p in ("cpu", "none")}
    assert (by_preset["cpu"]["mnist-fc"], by_preset["cpu"]["mnist-ram"]) == (1, 0)
    assert (by_preset["none"]["mnist-fc"], by_preset["none"]["mnist-ram"]) == (0, 2)
    assert main(["paper-table", "1", "--runs-dir", str(runs), "--out", str(tmp_path / "t")]) == 0
    md = (tmp_path / "t" / "table1.md").read_text()
    table = json.loads((tmp_path / "t" / "table1.json").read_text())
    assert table["command"].startswith("robust-uatt paper-table 1 --runs-dir") and table["versions"]["torch"]
    assert "| RAM, 6 glimpses, 8x8, 1 scale (`mnist-ram`) | 1.12% | 1.15% ± 0.07 | 2 |" in md
    assert "not run" in md and "not run" in capsys.readouterr().out


def test_paper_table_refuses_two_runs_of_one_seed(tmp_path: Path) -> None:
    _fake_run(tmp_path, "mnist-ram", "a", 0, 0.99)
    _fake_run(tmp_path, "mnist-ram", "b", 0, 0.98)
    with pytest.raises(UserError, match="same seed"):
        api.paper_table(1, runs_dir=tmp_path)


def test_autoattack_alone_is_averaged_where_the_suite_runs_it_first() -> None:
    """`defended` (and `standard`) run the reference AutoAttack first: its row's own accuracy gets a column of its
    own beside the worst case; a suite that does not start with it has none (never a made-up one)."""
    def defended(seed: int, aa: float, worst: float) -> EvaluationResult:
        r = _result("vgg-at", seed, 0.8, worst)
        r.suite = {"name": "defended"}
        r.attacks = [{"name": "autoattack", "robust_accuracy_after": aa},
                     {"name": "pgd-ce", "robust_accuracy_after": worst}]
        return r

    groups = api.seeds([defended(0, 0.40, 0.38), defended(1, 0.44, 0.41), _result("vgg", 0, 0.8, 0.1)])
    row = groups[0].to_json()
    assert row["autoattack"]["mean"] == pytest.approx(0.42) and row["worst_case"]["mean"] == pytest.approx(0.395)
    assert groups[1].to_json()["autoattack"] is None
    from robust_uatt.benchmark.seeds import seeds_markdown

    text = seeds_markdown(groups)
    assert "| AutoAttack |" in text.splitlines()[0] and "| 42.00 ± 2.83 |" in text
    assert "AutoAttack s0: 40.0" in text


def test_paper_table_rebuilds_from_committed_run_records(tmp_path: Path) -> None:
    """`--records`: the cards that docs/results/tables/run.sh copies next to the results (no run folder, no weights)
    rebuild the table; a record counts for the recipe its card names, and the preset filter applies as for runs."""
    records = tmp_path / "records"

    def record(folder: str, name: str, seed: int, acc: float, preset: str | None = None) -> None:
        (records / folder).mkdir(parents=True)
        write_json(records / folder / "model_card.json",
                   {"name": name, "accuracy": {"test": acc}, "data": {"test_n": 10000}, "seed": seed,
                    "preset": preset, "epochs": 100, "epochs_run": 40, "selection": {"best_epoch": 30}})

    record("mnist-ram-seed0", "mnist-ram", 0, 0.9890)
    record("mnist-ram-seed1", "mnist-ram", 1, 0.9880)
    record("mnist-ram-seed1-patience30", "mnist-ram", 1, 0.9900, preset="patience30")
    record("mnist-fc-seed0", "mnist-cnn", 0, 0.5)  # a misfiled card: not mnist-fc's
    rows = {r["recipe"]: r for r in api.paper_table(1, records=records, preset="none")["rows"]}
    assert rows["mnist-ram"]["n_seeds"] == 2 and rows["mnist-ram"]["error_mean"] == pytest.approx(0.0115)
    assert rows["mnist-fc"]["n_seeds"] == 0 and rows["mnist-cnn"]["n_seeds"] == 0
    longer = {r["recipe"]: r for r in api.paper_table(1, records=records, preset="patience30")["rows"]}
    assert longer["mnist-ram"]["n_seeds"] == 1 and longer["mnist-ram"]["error_mean"] == pytest.approx(0.0100)
    with pytest.raises(UserError, match="same seed"):  # without a preset filter, seed 1 appears twice
        api.paper_table(1, records=records)
