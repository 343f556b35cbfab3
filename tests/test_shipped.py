"""Shipped zoo weights: export a finished run as fp16 + card, and zoo names falling back to them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from robust_uatt.evaluation.intervals import clopper_pearson
from robust_uatt.models import shipped
from robust_uatt.models.zoo import find_weights, load_recipe, load_trained
from robust_uatt.training import export
from robust_uatt.training.loop import train


@pytest.fixture(scope="module")
def smoke_run(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("run") / "smoke"
    train(load_recipe("cifar10-vgg", "smoke"), run, seed=0, device=torch.device("cpu"), data_dir=str(data_dir),
          download=False)
    return run


def test_clopper_pearson_matches_the_exact_interval_for_50_of_100() -> None:
    low, high = clopper_pearson(50, 100)
    assert low < 0.5 < high
    assert (round(low, 4), round(high, 4)) == (0.3983, 0.6017)  # the exact interval for 50/100
    assert clopper_pearson(0, 10)[0] == 0.0 and clopper_pearson(10, 10)[1] == 1.0


def test_export_writes_fp16_weights_and_a_card_measured_on_them(smoke_run: Path, data_dir: Path,
                                                                   tmp_path: Path) -> None:
    weights, card_path = export.export_run(smoke_run, dest=tmp_path, data_dir=str(data_dir))
    assert weights.name == "cifar10-vgg.safetensors" and card_path.name == "cifar10-vgg.json"
    with safe_open(str(weights), framework="pt") as f:
        dtypes = {f.get_tensor(k).dtype for k in f.keys()}
    assert torch.float16 in dtypes and torch.float32 not in dtypes
    card = json.loads(card_path.read_text())
    for field in ("name", "architecture", "dataset", "eps", "clean_acc", "autoattack_acc", "additional_data",
                  "number_forward_passes", "recipe", "seed", "versions", "data"):
        assert field in card
    test = card["accuracy"]["test"]
    assert test["n"] == 200 and test["ci95"][0] <= test["accuracy"] <= test["ci95"][1]
    assert card["accuracy"]["test_lossless"]["n"] == 100  # the synthetic copy marks its first half lossless
    # The card describes the shipped (fp16) file: reload it and count again.
    model, _, _ = load_trained(str(weights))
    from robust_uatt.data.datasets import load_split
    test_split = load_split("cifar10", "test", str(data_dir), False)
    assert export._count_correct(model, test_split.x, test_split.y) == test["correct"]


def test_the_card_of_an_adversarially_trained_run_states_its_threat_model() -> None:
    adv = {"kind": "fgsm-rs", "eps": 8 / 255, "norm": "Linf", "stopped_early": None}
    recipe = {"dataset": "cifar10", "model": {"arch": "vgg16", "width": 0.5}}
    info = export.model_info({"recipe": recipe, "adversarial": adv, "epochs_run": 15}, "cifar10-vgg-at")
    assert info["eps"] == pytest.approx(8 / 255) and info["threat_model"] == "Linf"
    assert info["footnote"].startswith("Adversarially trained (fgsm-rs, Linf eps 0.03137") and "15 epochs" in info["footnote"]
    collapse = {"epoch": 9, "val_pgd_acc": 0.01, "restored_epoch": 7}
    stopped = export.model_info({"recipe": recipe, "adversarial": {**adv, "stopped_early": collapse}}, "x")
    assert "stopped it early: epoch 9 collapsed, epoch 7 restored" in stopped["footnote"]
    clean = export.model_info({"recipe": recipe}, "cifar10-vgg")
    assert clean["eps"] is None and clean["footnote"].startswith("Undefended")


def test_zoo_name_uses_a_local_run_first_then_the_shipped_weights(smoke_run: Path, data_dir: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    dest = tmp_path / "weights"
    export.export_run(smoke_run, dest=dest, data_dir=str(data_dir))
    monkeypatch.setattr(shipped, "shipped_dir", lambda: dest)
    empty_runs = tmp_path / "runs"
    found = find_weights("cifar10-vgg", empty_runs)
    assert found == dest / "cifar10-vgg.safetensors" and shipped.weights_origin(found) == "shipped"
    local = empty_runs / "cifar10-vgg" / "r1"
    local.mkdir(parents=True)
    (local / "model.safetensors").write_bytes((smoke_run / "model.safetensors").read_bytes())
    found = find_weights("cifar10-vgg", empty_runs)
    assert found == local / "model.safetensors" and shipped.weights_origin(found) == "local run"
    with pytest.raises(Exception, match="none shipped"):
        find_weights("cifar10-vgg-attn", empty_runs)


def test_export_refuses_an_unfinished_run(tmp_path: Path) -> None:
    from robust_uatt.utils.errors import UserError

    with pytest.raises(UserError, match="not a finished run"):
        export.export_run(tmp_path, dest=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_benchmark_command_evaluates_the_zoo_beside_robustbench(smoke_run: Path, run_cli, tmp_path: Path) -> None:
    """README command (1) end to end on a tiny preset: the zoo model with weights, clean + paper protocol + quick
    worst case at two radii, intervals, and the RobustBench rows of the same threat model."""
    from tests.test_compare import _row, _write_csv

    board = tmp_path / "board"
    board.mkdir()
    _write_csv(board / "cifar10_Linf.csv", [_row("Standard", "WideResNet-28-10", "94.78", "0.00", "8/255"),
                                            _row("R18", "PreActResNet-18", "85.00", "50.00", "8/255")])
    runs = tmp_path / "runs"
    (runs / "cifar10-vgg").mkdir(parents=True)
    (runs / "cifar10-vgg" / "smoke").symlink_to(smoke_run, target_is_directory=True)
    out = tmp_path / "bench"
    proc = run_cli("benchmark", "--n", "16", "--eps", "8/255,1/255", "--leaderboard", str(board), "--out", str(out),
                   "--runs-dir", str(runs), "--no-download", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "benchmark.json").read_text())
    rows = report["rows"]
    assert report["command"].startswith("robust-uatt benchmark --n 16") and report["versions"]["torch"]
    assert report["seconds"] > 0
    assert [(r["model"], r["eps"]) for r in rows] == [("cifar10-vgg", "8/255"), ("cifar10-vgg", "1/255")]
    for r in rows:
        assert r["weights"] == "local run" and r["n"] == 16
        assert r["paper_protocol"] is not None and r["clean"]["ci95"][0] <= r["clean"]["accuracy"]
        assert r["worst_case"]["accuracy"] <= r["paper_protocol"]["accuracy"] <= r["clean"]["accuracy"]
    assert (out / "cifar10-vgg" / "eps-8_255" / "results.json").is_file()
    assert "R18" in proc.stdout and "paper protocol" in proc.stdout
    # A rerun on the same --out reuses the finished evaluations instead of attacking again.
    again = run_cli("benchmark", "--n", "16", "--eps", "8/255,1/255", "--leaderboard", str(board), "--out", str(out),
                    "--runs-dir", str(runs), "--no-download", "--device", "cpu")
    assert again.returncode == 0, again.stderr
    assert json.loads((out / "benchmark.json").read_text())["rows"] == rows


def test_benchmark_without_any_weights_is_one_line(run_cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    proc = run_cli("benchmark", "--model", "cifar10-vgg-attn", "--runs-dir", str(tmp_path / "none"), "--no-download")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "train it first" in proc.stderr


def _real_data(dataset: str) -> Path | None:
    import os

    folder = os.environ.get("ROBUST_UATT_DATA")
    return Path(folder) if folder and (Path(folder) / dataset / f"{dataset}_test.npz").is_file() else None


@pytest.mark.parametrize("name", shipped.shipped_names() or ["(none shipped)"])
def test_the_shipped_weights_are_what_their_cards_say(name: str) -> None:
    """Every file in zoo/weights loads from its own header, carries a complete card, and classifies the 1,000
    lossless CIFAR-10 test images exactly as its card counts (README command (1) benchmarks these files)."""
    if name == "(none shipped)":
        pytest.skip("zoo/weights holds no shipped model")
    weights = shipped.shipped_dir() / f"{name}.safetensors"
    card = json.loads(weights.with_suffix(".json").read_text())
    assert card["kind"] == shipped.KIND and card["weights_dtype"] == "float16" and card["zoo_name"] in name
    assert isinstance(card["seed"], int) and card["versions"]["git_commit"] and card["command"]
    model, recipe, found = load_trained(str(weights))
    assert recipe.name == card["zoo_name"] and shipped.weights_origin(found) == "shipped"
    if recipe.adv:  # an adversarially trained model's card states its training threat model, RobustBench style
        assert card["eps"] == pytest.approx(card["adversarial"]["eps"]) and card["eps"] > 0
        assert card["adversarial"]["kind"] == recipe.adv["kind"] and card["footnote"].startswith("Adversarially")
    else:
        assert card["eps"] is None and "adversarial" not in card and card["footnote"].startswith("Undefended")
    from robust_uatt.data.datasets import load_split

    if recipe.dataset == "mnist":  # small models: their card counts the whole test split
        data = _real_data("mnist")
        if data is None:
            pytest.skip("needs the real MNIST test split ($ROBUST_UATT_DATA)")
        test = load_split("mnist", "test", str(data), False)
        entry = card["accuracy"]["test"]
        assert len(test) == entry["n"] == 10000
        assert export._count_correct(model, test.x, test.y) == entry["correct"]
        return
    data = _real_data("cifar10")
    if data is None or recipe.dataset != "cifar10":
        pytest.skip("needs the real CIFAR-10 test split ($ROBUST_UATT_DATA)")

    test = load_split("cifar10", "test", str(data), False)
    exact = test.subset(test.lossless)
    entry = card["accuracy"]["test_lossless"]
    assert len(exact) == entry["n"] == 1000
    assert export._count_correct(model, exact.x, exact.y) == entry["correct"]
