"""End to end through a subprocess, as a user runs it: smoke training, attack, results, and every bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    """One smoke training run shared by the attack tests (``robust-uatt train cifar10-vgg --preset smoke``)."""
    import os
    import subprocess
    import sys

    from tests.conftest import REPO

    cwd = tmp_path_factory.mktemp("cli")
    env = {**os.environ, "ROBUST_UATT_DATA": str(data_dir), "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-m", "robust_uatt", "train", "cifar10-vgg", "--preset", "smoke",
                          "--device", "auto", "--out", str(cwd / "runs/cifar10-vgg/smoke")],
                         cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return cwd / "runs/cifar10-vgg/smoke"


def test_zoo_lists_models(run_cli) -> None:
    out = run_cli("zoo")
    assert out.returncode == 0, out.stderr
    assert "cifar10-vgg" in out.stdout and "cifar10" in out.stdout and "M" in out.stdout
    names = run_cli("zoo", "--names").stdout.split()
    assert "cifar10-vgg" in names and "mnist-ram7" in names and all(" " not in n for n in names)


def test_smoke_train_writes_weights_card_and_metrics(trained_run: Path) -> None:
    names = {p.name for p in trained_run.iterdir()}
    assert {"model.safetensors", "model_card.json", "metrics.jsonl", "config.json", "checkpoint.safetensors"} <= names
    card = json.loads((trained_run / "model_card.json").read_text())
    assert card["name"] == "cifar10-vgg" and card["preset"] == "smoke" and card["seed"] == 0
    assert card["data"]["train_source"].startswith("npz:") and 0 <= card["accuracy"]["test"] <= 1
    assert card["recipe"]["model"]["width"] == 0.125


def test_attack_by_run_dir_and_by_zoo_name(trained_run: Path, run_cli, tmp_path: Path) -> None:
    runs = trained_run.parent.parent
    out = run_cli("attack", "--model", str(trained_run), "--attack", "pgd", "--eps", "0.3", "--steps", "3",
                  "--n", "40", "--out", "a1")
    assert out.returncode in (0, 4), out.stderr  # 4: a gating sanity check failed (a 1-epoch smoke model may)
    res = json.loads((tmp_path / out.stdout.strip().splitlines()[-1]).read_text())
    tm = res["threat_model"]
    assert (tm["norm"], tm["eps"], tm["eps_units"], tm["steps"]) == ("Linf", 0.3, "pixel [0,1]", 3)
    assert tm["alpha"] == pytest.approx(2.5 * 0.3 / 3)
    assert res["n"] == 40 and 0 <= res["robust_accuracy"] <= res["clean_accuracy"] <= 1
    assert len(res["per_example"]["robust_correct"]) == 40
    assert {"seconds", "versions", "seed", "checks", "forward_passes"} <= set(res)
    assert (res["attack_graph"]["graph"], res["attack_graph"]["folded_conv_bn"]) == ("folded", 13)
    assert res["valid"] == (out.returncode == 0) and res["valid"] == (not res["invalid_reasons"])
    assert "pgd" in out.stdout and "robust" in out.stdout  # the table
    by_name = run_cli("attack", "--model", "cifar10-vgg", "--runs-dir", str(runs), "--attack", "fgsm",
                      "--eps", "8/255", "--n", "20", "--out", "a2", "--checks", "none")
    assert by_name.returncode == 0, by_name.stderr
    res2 = json.loads((tmp_path / by_name.stdout.strip().splitlines()[-1]).read_text())
    assert res2["threat_model"]["eps"] == 8 / 255 and res2["model"]["weights"].startswith(str(runs))
    assert (tmp_path / "a2" / "results.md").read_text().startswith("# cifar10-vgg: fgsm")


@pytest.mark.parametrize("args, message", [
    (["train", "cifar10-vg"], "did you mean cifar10-vgg"),
    (["train", "cifar10-vgg", "--preset", "smok"], "did you mean smoke"),
    (["attack", "--model", "nonexistent-model"], "unknown model"),
    (["attack", "--model", "cifar10-vgg", "--runs-dir", "empty"], "no trained weights"),
    (["attack", "--model", "RUN", "--attack", "pgdd"], "did you mean pgd"),
    (["attack", "--model", "RUN", "--eps", "-0.1"], "eps"),
    (["attack", "--model", "RUN", "--eps", "eight"], "cannot parse eps"),
    (["attack", "--model", "RUN", "--n", "0"], "--n must be a positive integer"),
    (["attack", "--model", "RUN", "--steps", "-3"], "--steps must be a positive integer"),
    (["attack", "--model", "RUN", "--n", "abc"], "invalid int value"),
    (["attack", "--model", "RUN", "--n", "100000"], "exceeds"),
    (["attack", "--model", "RUN", "--device", "cuda:7"], "cuda"),
    (["train", "cifar10-vgg", "--preset", "smoke", "--epochs", "0"], "--epochs must be a positive integer"),
    (["frobnicate"], "invalid choice"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(trained_run: Path, run_cli, tmp_path: Path,
                                                         args: list[str], message: str) -> None:
    args = [str(trained_run) if a == "RUN" else a for a in args]
    if "--device" in args and "cuda" in args[-1]:
        pytest.importorskip("torch")
        import torch

        if torch.cuda.is_available():
            pytest.skip("a CUDA device exists")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    out = run_cli(*args)
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert message in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "Traceback" not in out.stderr
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_missing_data_names_both_options(run_cli, tmp_path: Path) -> None:
    out = run_cli("train", "cifar10-vgg", "--preset", "smoke", "--no-download", "--out", "r",
                  env={"ROBUST_UATT_DATA": str(tmp_path / "nothing")})
    assert out.returncode == 2 and "ROBUST_UATT_DATA" in out.stderr and "download" in out.stderr
    assert not (tmp_path / "r" / "model.safetensors").exists()


def test_checkpoint_that_does_not_fit_and_corrupt_checkpoint(trained_run: Path, run_cli, tmp_path: Path) -> None:
    tensors = load_file(str(trained_run / "model.safetensors"))
    from safetensors import safe_open

    with safe_open(str(trained_run / "model.safetensors"), "pt") as f:
        meta = f.metadata()
    tensors["classifier.1.weight"] = tensors["classifier.1.weight"][:5]
    save_file(tensors, str(tmp_path / "mismatch.safetensors"), metadata=meta)
    out = run_cli("attack", "--model", "mismatch.safetensors", "--n", "10", "--out", "x")
    assert out.returncode == 2 and "does not fit the architecture" in out.stderr and "classifier.1.weight" in out.stderr
    (tmp_path / "corrupt.safetensors").write_bytes((trained_run / "model.safetensors").read_bytes()[:1000])
    out = run_cli("attack", "--model", "corrupt.safetensors", "--n", "10", "--out", "y")
    assert out.returncode == 2 and "corrupt" in out.stderr
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_existing_results_are_never_overwritten(trained_run: Path, run_cli, tmp_path: Path) -> None:
    (tmp_path / "done").mkdir()
    (tmp_path / "done" / "results.json").write_text("{}")
    out = run_cli("attack", "--model", str(trained_run), "--n", "10", "--out", "done")
    assert out.returncode == 2 and (tmp_path / "done" / "results.json").read_text() == "{}"


def test_attention_model_trains_draws_glimpses_and_is_attacked(run_cli, tmp_path: Path) -> None:
    out = run_cli("train", "mnist-uatt", "--preset", "smoke", "--out", "uatt")
    assert out.returncode == 0, out.stderr
    metrics = json.loads((tmp_path / "uatt" / "metrics.jsonl").read_text().splitlines()[-1])
    for key in ("loss_cls", "loss_context", "loss_reinforce", "loss_baseline", "loss_q", "reward_mean",
                "entropy_mean"):
        assert key in metrics
    out = run_cli("glimpses", "--model", "uatt", "--n", "4", "--out", "g.png")
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "g.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = run_cli("attack", "--model", "uatt", "--attack", "pgd-eq14", "--eps", "0.3", "--steps", "2", "--n", "16",
                  "--out", "att", "--checks", "none", "--option", "grad_path=full")
    assert out.returncode == 0, out.stderr
    res = json.loads((tmp_path / "att" / "results.json").read_text())
    assert res["paper_protocol_accuracy"] == res["robust_accuracy"] and res["overestimation"] == 0
    assert res["attacks"][0]["options"]["grad_path"] == "full" and res["attacks"][0]["backward_passes"] > 0
    out = run_cli("attack", "--model", "uatt", "--suite", "quick", "--eps", "0.3", "--n", "16", "--out", "q",
                  "--policy", "sample", "--eot", "2", "--checks", "fast")
    assert out.returncode in (0, 4), out.stderr
    res = json.loads((tmp_path / "q" / "results.json").read_text())
    assert [a["name"] for a in res["attacks"]] == ["fgsm", "pgd-ce", "noise"] and res["eot"] == 2  # + the probe
    assert {c["name"]: c["passed"] for c in res["checks"]}["deterministic (5 passes)"] is None  # stochastic: n/a


def test_glimpses_refuses_a_model_without_attention(trained_run: Path, run_cli) -> None:
    out = run_cli("glimpses", "--model", str(trained_run), "--out", "g.png")
    assert out.returncode == 2 and "not an attention model" in out.stderr


def test_security_curve_is_monotone_and_keeps_raw_values(trained_run: Path, run_cli, tmp_path: Path) -> None:
    out = run_cli("curve", "--model", str(trained_run), "--eps", "0.3,0,8/255,0.1", "--steps", "3", "--n", "24",
                  "--out", "c")
    assert out.returncode in (0, 4), out.stderr  # 4: a gating sanity check failed (a 1-epoch smoke model may)
    curve = json.loads((tmp_path / "c" / "curve.json").read_text())
    by_eps = sorted(zip(curve["eps"], curve["robust_accuracy"], curve["raw_robust_accuracy"]))
    accs = [a for _, a, _ in by_eps]
    assert accs == sorted(accs, reverse=True) and by_eps[0][1] == curve["clean_accuracy"]
    assert all(mono <= raw for _, mono, raw in by_eps) and len(curve["per_example_raw"]) == 4
    assert (tmp_path / "c" / "curve.png").read_bytes()[:4] == b"\x89PNG"


def test_selftest_command_reports_and_sets_the_exit_code(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    import robust_uatt.evaluation.selftest as selftest
    from robust_uatt.cli import main

    row = {"clean": 0.4, "naive": 0.4, "worst_case": 0.4, "verdict": "INVALID", "expected": ["x"]}
    caught = {"undefended model": {**row, "caught": False, "failed": [], "verdict": "valid", "expected": []},
              **{name: {**row, "caught": True, "failed": ["x"]} for name in selftest.BROKEN}}
    monkeypatch.setattr(selftest, "run_selftest", lambda seed=0, data_dir=None, n=200: caught)
    assert main(["selftest"]) == 0 and "caught 8 of 8" in capsys.readouterr().out
    caught["forward noise"] = {**row, "caught": False, "failed": []}
    assert main(["selftest"]) == 1 and "caught 7 of 8" in capsys.readouterr().out


def test_any_model_through_a_factory_and_a_safetensors_checkpoint(run_cli, tmp_path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    (tmp_path / "my_models.py").write_text(
        "import torch\n"
        "def tiny():\n"
        "    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10))\n")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10))
    save_file(model.state_dict(), str(tmp_path / "tiny.safetensors"))
    env = {"PYTHONPATH": f"{tmp_path}:{Path(__file__).resolve().parent.parent}"}
    out = run_cli("attack", "--model-factory", "my_models:tiny", "--checkpoint", "tiny.safetensors", "--attack",
                  "fgsm", "--n", "20", "--out", "f", "--checks", "none", env=env)
    assert out.returncode == 0, out.stderr
    res = json.loads((tmp_path / "f" / "results.json").read_text())
    assert res["model"]["kind"] == "factory" and res["model"]["name"] == "my_models:tiny" and res["n"] == 20
    bad = run_cli("attack", "--model-factory", "my_models:nope", "--n", "5", "--out", "g", env=env)
    assert bad.returncode == 2 and "cannot import my_models:nope" in bad.stderr
    both = run_cli("attack", "--model", "x", "--model-factory", "my_models:tiny", "--out", "h", env=env)
    assert both.returncode == 2 and "exactly one" in both.stderr
