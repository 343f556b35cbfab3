"""Scaling out on torch.distributed (issue 14), on this CPU with gloo: 2-process DDP training that matches the
one-process run with the same global batch, survives a killed rank (the other stops with one line, bounded) and
resumes; sharded attacks (torchrun ranks, or --shard i/k + --merge) whose per-example outcomes equal the unsharded
run's exactly; bad launch settings as one line, exit 2.

The 2-process runs are launched as torchrun launches them (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT in
the environment of `python -m robust_uatt`), without torchrun's agent, so a dead rank is noticed by the survivor
itself, not cleaned up by the agent."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import robust_uatt as ru
from robust_uatt import cli
from robust_uatt.utils.errors import UserError
from tests.conftest import REPO

RECIPE = """
description = "tiny MLP for the distributed tests"
dataset = "cifar10"
[model]
arch = "mlp"
hidden = 32
layers = 2
[data]
augment = "crop-flip"
[train]
epochs = 2
batch_size = 40
optimizer = "sgd"
lr = 0.05
momentum = 0.9
weight_decay = 5e-4
schedule = "constant"
limit_train = 400
limit_test = 100
checkpoint_every = 4
"""

# rank 1 dies by SIGKILL at step 6 of epoch 2 (global step 15), after the mid-epoch checkpoint of step 4: the
# resumed run starts inside the epoch, from running sums that rank 0's checkpoint holds for both ranks
KILL_HOOK = """
import os, signal
if os.environ.get("ROBUST_UATT_TEST_KILL_RANK") == os.environ.get("RANK"):
    import robust_uatt.training.loop as loop
    step = loop.train_step
    def die_at_step_15(run, state, train_set, idx, global_step):
        if global_step == 15:
            os.kill(os.getpid(), signal.SIGKILL)
        return step(run, state, train_set, idx, global_step)
    loop.train_step = die_at_step_15
"""


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _launch(args: list[list[str]], cwd: Path, data_dir: Path, extra: dict[str, str] | None = None,
            pythonpath: str | None = None) -> list[subprocess.Popen]:
    """Start len(args) ranks of `python -m robust_uatt ARGS[r]` with torchrun's environment."""
    port = str(_port())
    procs = []
    for rank, argv in enumerate(args):
        env = {**os.environ, "ROBUST_UATT_DATA": str(data_dir), "PYTHONPATH": pythonpath or str(REPO),
               "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(len(args)),
               "LOCAL_WORLD_SIZE": str(len(args)), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port,
               "OMP_NUM_THREADS": "1", "ROBUST_UATT_DIST_TIMEOUT": "60", "COLUMNS": "200", **(extra or {})}
        procs.append(subprocess.Popen([sys.executable, "-m", "robust_uatt", *argv], cwd=cwd, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return procs


def _wait(procs: list[subprocess.Popen], timeout: float = 240) -> list[tuple[int, str, str]]:
    out = []
    try:
        for p in procs:
            stdout, stderr = p.communicate(timeout=timeout)
            out.append((p.returncode, stdout, stderr))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return out


def _wait_for_death(procs: list[subprocess.Popen], dead: int, timeout: float = 240
                    ) -> tuple[list[tuple[int, str, str]], float]:
    """``_wait``, with rank ``dead`` (the one a hook kills) waited for first; also returns how long the other ranks
    took to exit after it died, so the bound on stopping does not depend on how fast a loaded machine starts and
    trains (the ranks print little: their unread pipes cannot fill meanwhile)."""
    out: dict[int, tuple[int, str, str]] = {}
    try:
        stdout, stderr = procs[dead].communicate(timeout=timeout)
        out[dead] = (procs[dead].returncode, stdout, stderr)
        died = time.monotonic()
        for rank, p in enumerate(procs):
            if rank != dead:
                stdout, stderr = p.communicate(timeout=timeout)
                out[rank] = (p.returncode, stdout, stderr)
        lag = time.monotonic() - died
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return [out[r] for r in range(len(procs))], lag


@pytest.fixture(scope="module")
def recipe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("recipe") / "tiny-mlp.toml"
    path.write_text(RECIPE)
    return path


@pytest.fixture(scope="module")
def attacked_model(recipe: Path, data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model the quick suite breaks in part (SGD's two tiny epochs leave a near-constant classifier)."""
    out = tmp_path_factory.mktemp("attacked") / "run"
    ru.train(str(recipe), out=out, data_dir=str(data_dir), device="cpu", optimizer="adam", lr=0.003, epochs=10)
    return out


@pytest.fixture(scope="module")
def one_process_run(recipe: Path, data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("single") / "run"
    ru.train(str(recipe), out=out, data_dir=str(data_dir), device="cpu")
    return out


def test_ddp_training_matches_one_process_survives_a_killed_rank_and_resumes(
        recipe: Path, one_process_run: Path, data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "ddp"
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(KILL_HOOK)
    argv = ["train", str(recipe), "--out", str(run), "--device", "cpu"]
    # a dead peer is noticed at the next collective, not after the process group's timeout (120 s here)
    [(rc0, _, err0), (rc1, _, _)], lag = _wait_for_death(_launch(
        [argv, argv], tmp_path, data_dir, {"ROBUST_UATT_TEST_KILL_RANK": "1", "ROBUST_UATT_DIST_TIMEOUT": "120"},
        f"{hook}{os.pathsep}{REPO}"), dead=1)
    assert rc1 == -signal.SIGKILL
    # the survivor stops by itself, with one line naming the failure and the resume command, long before the timeout
    assert rc0 == 5, err0
    assert lag < 60, lag
    last = err0.strip().splitlines()[-1]
    assert "another rank stopped" in last and "--resume" in last, err0
    assert (run / "checkpoint.safetensors").is_file() and not (run / "model.safetensors").exists()
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1
    from robust_uatt.utils.files import load_tensors

    tensors, meta = load_tensors(run / "checkpoint.safetensors")
    assert (meta["epoch"], meta["step_in_epoch"]) == (1, 4) and {"rng.cpu.rank0", "rng.cpu.rank1"} <= set(tensors)
    # a run resumes only with the world size it started with
    assert cli.main(["train", "--resume", str(run), "--data-dir", str(data_dir)]) == 2
    assert "was trained with world size 2" in capsys.readouterr().err

    resumed = _wait(_launch([["train", "--resume", str(run)]] * 2, tmp_path, data_dir))
    assert [r[0] for r in resumed] == [0, 0], resumed[0][2] + resumed[1][2]
    assert resumed[0][1].strip() == str(run) and resumed[1][1] == ""  # rank 0 speaks for the run

    ddp, single = load_file(run / "model.safetensors"), load_file(one_process_run / "model.safetensors")
    assert ddp.keys() == single.keys()
    for k in ddp:  # the same global batches and augmentation; only the order of float reductions differs
        torch.testing.assert_close(ddp[k], single[k], rtol=1e-4, atol=1e-5)
        assert not torch.equal(ddp[k], torch.zeros_like(ddp[k]))
    card = json.loads((run / "model_card.json").read_text())
    assert card["distributed"] == {"world_size": 2, "global_batch": 40, "per_rank_batch": 20, "backend": "gloo",
                                   "sync_batchnorm": False}
    assert json.loads((one_process_run / "model_card.json").read_text())["distributed"]["world_size"] == 1
    a = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    b = [json.loads(line) for line in (one_process_run / "metrics.jsonl").read_text().splitlines()]
    assert len(a) == len(b) == 2
    for x, y in zip(a, b):
        assert x["train_acc"] == y["train_acc"] and x["val_acc"] == pytest.approx(y["val_acc"], abs=1e-6)
        assert x["train_loss"] == pytest.approx(y["train_loss"], rel=1e-5)
    # the result loads like any other run
    assert ru.load_model(str(run)) is not None


def test_ranks_must_agree_and_the_world_size_must_divide_the_batch(recipe: Path, one_process_run: Path,
                                                                    attacked_model: Path, data_dir: Path,
                                                                    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                    capsys: pytest.CaptureFixture) -> None:
    # ranks launched with different settings: one line and exit 2 on every rank, for training and for attacks
    base = ["train", str(recipe), "--out", str(tmp_path / "odd"), "--device", "cpu"]
    results = _wait(_launch([base, [*base, "--seed", "1"]], tmp_path, data_dir))
    assert [r[0] for r in results] == [2, 2]
    for _, _, err in results:
        assert len(err.strip().splitlines()) == 1
        assert "rank 1's training configuration" in err and "differs from rank 0's" in err
    assert not (tmp_path / "odd").exists()
    attack = ["attack", "--model", str(attacked_model), "--suite", "quick", "--eps", "0.3", "--images", "16",
              "--block", "8", "--checks", "none", "--device", "cpu", "--out", str(tmp_path / "odd-attack")]
    results = _wait(_launch([[*attack, "--seed", "0"], [*attack, "--seed", "1"]], tmp_path, data_dir))
    assert [r[0] for r in results] == [2, 2]
    for _, _, err in results:
        assert len(err.strip().splitlines()) == 1
        assert "rank 1's evaluation" in err and "differs from rank 0's" in err
    assert not list((tmp_path / "odd-attack").rglob("*.json"))  # no state, no result
    # a global batch the world size does not divide: refused before any process group exists
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "0")
    assert cli.main(["train", str(recipe), "--out", str(tmp_path / "x"), "--device", "cpu",
                     "--data-dir", str(data_dir)]) == 2
    assert "does not split evenly across 3 ranks" in capsys.readouterr().err


ATTACK = dict(eps="0.3", suite="quick", n=48, batch_size=8, block=16, checks="none", seed=3, device="cpu")


def test_sharded_attacks_merge_to_the_unsharded_outcomes_exactly(attacked_model: Path, data_dir: Path,
                                                                 tmp_path: Path) -> None:
    model = ru.load_model(str(attacked_model))
    kw = {**ATTACK, "data_dir": str(data_dir)}
    whole = ru.evaluate(model, **kw, out=tmp_path / "whole")
    shards = [tmp_path / f"shard{i}" for i in range(3)]
    for i, folder in enumerate(shards):
        state = ru.evaluate_shard(model, shard=f"{i}/3", out=folder, **kw)
        assert json.loads(state.read_text())["shard"]["points"] == [16 * i, 16 * (i + 1)]
    merged = ru.evaluate(model, **kw, merge=shards, out=tmp_path / "merged")
    assert merged.per_example == whole.per_example
    assert [(r["attacked"], r["broken"]) for r in merged.attacks] == [(r["attacked"], r["broken"])
                                                                     for r in whole.attacks]
    assert 0 < merged.robust_accuracy < merged.clean_accuracy  # the attacks broke some points, not all

    # refusals: missing, overlapping, or made with another configuration
    with pytest.raises(UserError, match="shard 0/3, but 2 shard"):
        ru.evaluate(model, **kw, merge=shards[:2], out=tmp_path / "m1")
    with pytest.raises(UserError, match="given twice"):
        ru.evaluate(model, **kw, merge=[shards[0], shards[0], shards[1]], out=tmp_path / "m2")
    other = tmp_path / "other-seed"
    ru.evaluate_shard(model, shard="2/3", out=other, **{**kw, "seed": 4})
    with pytest.raises(UserError, match="another configuration"):
        ru.evaluate(model, **kw, merge=[shards[0], shards[1], other], out=tmp_path / "m3")
    with pytest.raises(UserError, match="cannot split 48 points"):
        ru.evaluate_shard(model, shard="0/4", out=tmp_path / "s4", **kw)

    # the same under a 2-rank launch: rank 0 gathers and writes one results.json
    argv = ["attack", "--model", str(attacked_model), "--suite", "quick", "--eps", "0.3", "--n", "48",
            "--batch-size", "8", "--block", "16", "--checks", "none", "--seed", "3", "--device", "cpu",
            "--out", str(tmp_path / "torchrun")]
    results = _wait(_launch([argv, argv], tmp_path, data_dir))
    assert [r[0] for r in results] == [0, 0], results[0][2] + results[1][2]
    gathered = json.loads((tmp_path / "torchrun" / "results.json").read_text())
    assert gathered["per_example"] == whole.per_example
    assert gathered["data"]["block"] == 16 and gathered["shards"]["count"] == 2
    assert ru.EvaluationResult.load(tmp_path / "torchrun").robust_accuracy == whole.robust_accuracy
    assert (tmp_path / "torchrun" / "shard-1-of-2" / "state.json").is_file()


def test_bad_shard_settings_are_one_line(one_process_run: Path, data_dir: Path, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    base = ["attack", "--model", str(one_process_run), "--attack", "fgsm", "--n", "48", "--batch-size", "8",
            "--checks", "none", "--data-dir", str(data_dir), "--device", "cpu"]
    for extra, message in ((["--shard", "2/2", "--out", str(tmp_path / "a")], "0 <= i < k"),
                           (["--shard", "x", "--out", str(tmp_path / "a")], "expects i/k"),
                           (["--shard", "0/2"], "--shard needs --out"),
                           (["--merge", str(tmp_path / "none"), "--out", str(tmp_path / "b")], "no shard state"),
                           (["--block", "16", "--out", str(tmp_path / "c")], None),
                           (["--shard", "0/2", "--out", str(tmp_path / "d")], "--shard and --merge are for runs")):
        if message is None:  # 3 blocks cannot feed 4 ranks: refused before any process group exists
            monkeypatch.setenv("WORLD_SIZE", "4")
            monkeypatch.setenv("RANK", "0")
            message = "4 shards cannot split 48 points"
        assert cli.main([*base, *extra]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and message in err, err
    assert cli.main(["zoo"]) == 2  # still WORLD_SIZE=4: commands that do not scale out say so
    assert "only train and attack scale out" in capsys.readouterr().err


DUMP_HOOK = """
import os
if os.environ.get("ROBUST_UATT_TEST_DUMP"):
    import torch
    import robust_uatt.training.loop as loop
    step = loop.train_step
    def step_and_dump(run, state, *args, **kwargs):
        out = step(run, state, *args, **kwargs)
        folder, rank = os.environ["ROBUST_UATT_TEST_DUMP"], os.environ["RANK"]
        torch.save(state.model.state_dict(), os.path.join(folder, f"rank{rank}.pt"))
        return out
    loop.train_step = step_and_dump
"""


def test_the_attention_model_trains_under_ddp(data_dir: Path, tmp_path: Path) -> None:
    """Every Eq. 14 term (classification, context, REINFORCE, baseline) and the Q loss in one DDP forward, with
    unused parameters looked for and the frozen target network outside the reduction: the top-down learner with
    3 levels (so the Bellman target consults the target network), synced every 2 updates; after the run every
    rank holds the same weights, target network included, and the target is the trained online Q network."""
    recipe = tmp_path / "mnist-uatt-td.toml"
    text = (REPO / "zoo" / "mnist-uatt.toml").read_text()
    assert "top_down = false" in text
    recipe.write_text(text.replace("top_down = false", "top_down = true\nlevels = 3\ntd_target_sync = 2\n#", 1))
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(DUMP_HOOK)
    argv = ["train", str(recipe), "--preset", "smoke", "--out", str(tmp_path / "uatt"), "--device", "cpu"]
    results = _wait(_launch([argv, argv], tmp_path, data_dir, {"ROBUST_UATT_TEST_DUMP": str(hook)},
                            f"{hook}{os.pathsep}{REPO}"))
    assert [r[0] for r in results] == [0, 0], results[0][2] + results[1][2]
    record = json.loads((tmp_path / "uatt" / "metrics.jsonl").read_text().splitlines()[-1])
    for term in ("loss_cls", "loss_context", "loss_reinforce", "loss_baseline", "loss_q", "train_loss"):
        assert term in record and record[term] == record[term]  # present and not NaN
    assert record["loss_q"] > 0  # the Q-learning term is trained, not a constant zero
    card = json.loads((tmp_path / "uatt" / "model_card.json").read_text())
    assert card["distributed"]["world_size"] == 2 and card["distributed"]["global_batch"] == 128
    rank0, rank1 = (torch.load(hook / f"rank{r}.pt") for r in (0, 1))
    assert rank0.keys() == rank1.keys()
    for k in rank0:  # the reduced online networks and the target network synced from them agree on every rank
        assert torch.equal(rank0[k], rank1[k]), k
    assert int(rank0["top_down.updates"]) == 4  # 512 images, global batch 128: synced after updates 2 and 4
    target = [k for k in rank0 if ".target_net." in k]
    assert target and all(torch.equal(rank0[k], rank0[k.replace(".target_net.", ".q_net.")]) for k in target)
    model = ru.load_model(str(tmp_path / "uatt"))
    assert hasattr(model, "trace")


ATTACK_KILL_HOOK = """
import os, signal
if os.environ.get("ROBUST_UATT_TEST_KILL_RANK") == os.environ.get("RANK"):
    import robust_uatt.evaluation.harness as harness
    save = harness._save_state
    def save_then_die(*args, **kwargs):
        save(*args, **kwargs)
        if sum(len(r.batches_done) for r in args[3]) >= 2:
            os.kill(os.getpid(), signal.SIGKILL)  # right after the state write of this rank's 2nd batch
    harness._save_state = save_then_die
"""


def test_a_rank_killed_mid_attack_stops_the_others_and_the_rerun_resumes(attacked_model: Path, data_dir: Path,
                                                                         tmp_path: Path) -> None:
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(ATTACK_KILL_HOOK)
    out = tmp_path / "attack"
    argv = ["attack", "--model", str(attacked_model), "--suite", "quick", "--eps", "0.3", "--images", "48",
            "--batch-size", "8", "--block", "16", "--checks", "none", "--seed", "3", "--device", "cpu",
            "--out", str(out)]
    [(rc0, _, err0), (rc1, _, _)], lag = _wait_for_death(_launch(
        [argv, argv], tmp_path, data_dir, {"ROBUST_UATT_TEST_KILL_RANK": "1", "ROBUST_UATT_DIST_TIMEOUT": "120"},
        f"{hook}{os.pathsep}{REPO}"), dead=1)
    assert rc1 == -signal.SIGKILL and rc0 == 5, err0
    assert lag < 60, lag  # rank 0 finishes its own shard (saved, so the rerun skips it), then fails at the gather
    assert "another rank stopped" in err0 and "rerun the same command" in err0
    assert not (out / "results.json").exists()
    killed_state = json.loads((out / "shard-1-of-2" / "state.json").read_text())
    assert sum(len(r["batches_done"]) for r in killed_state["records"]) == 2

    resumed = _wait(_launch([argv, argv], tmp_path, data_dir))
    assert [r[0] for r in resumed] == [0, 0], resumed[0][2] + resumed[1][2]
    whole = ru.evaluate(ru.load_model(str(attacked_model)), **{**ATTACK, "data_dir": str(data_dir)})
    assert json.loads((out / "results.json").read_text())["per_example"] == whole.per_example
