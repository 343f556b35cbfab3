"""Sequence models through the training loop, the public evaluation API and the CLI: whole-sequence accuracy in
training and evaluation, a point broken when its predicted sequence changes, the same checks, refused adapters."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import robust_uatt as ru
from robust_uatt import api, cli
from robust_uatt.attacks import build_attack
from robust_uatt.data.datasets import Split
from robust_uatt.data.multidigit import IGNORE
from robust_uatt.evaluation.harness import run_suite
from robust_uatt.evaluation.predict import accuracy, predict
from robust_uatt.models.outputs import correct, decide, margin
from robust_uatt.models.sequence import build_cnn_seq
from robust_uatt.utils.errors import UserError
from tests.test_sequence import fit, toy_problem


@pytest.fixture(scope="module")
def toy_model() -> tuple[torch.nn.Module, Split]:
    """A sequence CNN fitted to the 2-digit toy problem, and 64 of its test images as uint8 with sequence labels."""
    torch.manual_seed(0)
    data = toy_problem()
    model = build_cnn_seq(num_classes=11, in_channels=1, image_size=20, positions=3, channels=(16, 32), hidden=64)
    fit(model, data, steps=150, lr=3e-3)
    x = (data[2][:64] * 255).round().to(torch.uint8)
    return model.eval(), Split(x, data[3][:64], "toy")


def test_accuracy_counts_whole_sequences(toy_model) -> None:
    model, data = toy_model
    preds = predict(model, data.x, 32, torch.device("cpu"))
    assert preds.shape == data.y.shape
    whole = float((preds == data.y).all(1).float().mean())
    per_digit = float((preds[:, :2] == data.y[:, :2]).float().mean())
    assert accuracy(model, data.x, data.y, 32, torch.device("cpu")) == whole
    assert 0.3 < whole < per_digit  # a sequence is right only when both digits (and the terminal) are


def test_harness_breaks_a_point_when_its_sequence_changes(toy_model) -> None:
    model, data = toy_model
    attacks = [build_attack("pgd-ce", eps=0.5, steps=10, seed=0)]
    outcome = run_suite(model, attacks, data, batch_size=32, device=torch.device("cpu"))
    x = data.x.float() / 255
    with torch.no_grad():
        clean = correct(model(x), data.y)
    assert torch.equal(outcome.clean_correct, clean) and clean.sum() > 10
    broken = outcome.records[0].broken
    assert broken and set(broken) <= set(torch.nonzero(clean).flatten().tolist())
    idx = torch.tensor(broken)
    adv = attacks[0](model, x[idx], data.y[idx], idx)  # the same seeded attack again: the same examples
    with torch.no_grad():
        pred = decide(model(adv))
    assert ((adv - x[idx]).abs().amax() <= 0.5 + 1e-6) and not (pred == data.y[idx]).all(1).any()


def test_evaluate_runs_the_checks_and_refuses_library_adapters(toy_model) -> None:
    model, data = toy_model
    result = ru.evaluate(model, data.x, data.y, eps=0.3, attacks=["pgd-ce", "noise"], steps=5, checks="full",
                         batch_size=32, device="cpu", seed=0)
    assert 0 <= result.robust_accuracy <= result.clean_accuracy == pytest.approx(
        float(correct(model(data.x.float() / 255), data.y).float().mean()))
    gating = {c["name"]: c["passed"] for c in result.checks if c["gating"]}
    assert gating["logits, not softmax"] and gating["input gradients"] and gating["eps = 0 gives clean"]
    assert gating["eps = 1 breaks everything"]
    assert {"monotone in eps", "doubling steps changes < 1 point"} <= {c["name"] for c in result.checks}
    for name in ("apgd-ce", "square", "fgsm"):
        with pytest.raises(UserError, match="cannot attack a sequence model"):
            ru.evaluate(model, data.x, data.y, eps=0.3, attacks=[name], device="cpu")


def test_sequence_margin_is_positive_exactly_when_the_sequence_is_wrong() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(500, 11, 3, generator=gen) * 3
    y = torch.randint(0, 10, (500, 3), generator=gen)
    y[:, 2] = 10
    y[::2, 1], y[::2, 2] = 10, IGNORE  # half of them one digit long
    logits += torch.nn.functional.one_hot(y.clamp(min=0), 11).permute(0, 2, 1).float() * 4  # many right, many wrong
    assert torch.equal(margin(logits, y) > 0, ~correct(logits, y)) and 0.1 < float(correct(logits, y).float().mean())


def test_margin_losses_attack_sequences(toy_model) -> None:
    model, data = toy_model
    for loss in ("cw", "dlr"):
        result = ru.evaluate(model, data.x[:32], data.y[:32], eps=0.3, attacks=["pgd-ce"], steps=10, checks="none",
                             options={"loss": loss}, device="cpu")
        assert result.robust_accuracy < result.clean_accuracy, loss


def test_the_sequence_suite_runs_every_attack_it_names(toy_model) -> None:
    model, data = toy_model
    result = ru.evaluate(model, data.x[:16], data.y[:16], eps=0.3, suite="sequence", checks="none", device="cpu")
    names = [row["name"] for row in result.attacks]
    assert names == ["pgd-eq14", "pgd-ce", "pgd-bpda", "region-enum", "noise"]
    assert result.attacks[0]["options"]["grad_path"] == "full" and result.attacks[0]["backward_passes"] > 0
    assert result.robust_accuracy <= result.paper_protocol_accuracy <= result.clean_accuracy


def test_cli_trains_and_attacks_a_sequence_attention_model(run_cli, tmp_path: Path, data_dir: Path, monkeypatch,
                                                           capsys) -> None:
    out = run_cli("train", "multidigit-mnist-uatt", "--preset", "smoke", "--out", "seq")
    assert out.returncode == 0, out.stderr
    metrics = json.loads((tmp_path / "seq" / "metrics.jsonl").read_text().splitlines()[-1])
    assert metrics["train_acc"] == pytest.approx(metrics["reward_mean"])  # whole-sequence accuracy in training
    assert 0 <= metrics["val_acc"] <= 1 and metrics["loss_context"] > 0 and metrics["loss_q"] > 0
    card = json.loads((tmp_path / "seq" / "model_card.json").read_text())
    assert "multidigit" in card["data"]["train_source"] and 0 <= card["accuracy"]["test"] <= 1
    out = run_cli("attack", "--model", "seq", "--attack", "pgd-ce", "--eps", "0.3", "--steps", "2", "--n", "16",
                  "--out", "att", "--checks", "fast")
    assert out.returncode in (0, 4), out.stderr  # 4: a gating check failed (a one-epoch smoke model may)
    res = json.loads((tmp_path / "att" / "results.json").read_text())
    assert res["n"] == 16 and res["data"]["dataset"] == "multidigit-mnist"
    assert 0 <= res["robust_accuracy"] <= res["clean_accuracy"] <= 1 and res["checks"]
    assert len(res["per_example"]["clean_correct"]) == 16
    # in process from here on (a subprocess per call costs seconds of start-up): refusal and glimpse plot
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ROBUST_UATT_DATA", str(data_dir))
    assert cli.main(["attack", "--model", "seq", "--attack", "apgd-ce", "--eps", "0.3", "--n", "16",
                     "--out", "bad"]) == 2
    err = capsys.readouterr().err
    assert "cannot attack a sequence model" in err and err.count("\n") == 1 and not (tmp_path / "bad").exists()
    api.draw_glimpses(ru.load_model("seq"), tmp_path / "g.png", n=4)
    assert (tmp_path / "g.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
