"""Crash-safe attacks: an `attack` killed mid-run and restarted recomputes only unfinished batches and writes the same
results.json as an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO

VOLATILE = {"seconds", "command", "versions", "timing"}


def _stable(result: dict) -> dict:
    out = {k: v for k, v in result.items() if k not in VOLATILE}
    out["attacks"] = [{k: v for k, v in a.items() if k != "seconds"} for a in result["attacks"]]
    out["checks"] = [{k: v for k, v in c.items() if k != "seconds"} for c in result["checks"]]
    return out


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    cwd = tmp_path_factory.mktemp("resume")
    env = {**os.environ, "ROBUST_UATT_DATA": str(data_dir), "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-m", "robust_uatt", "train", "cifar10-vgg", "--preset", "smoke", "--out",
                          str(cwd / "model")], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return cwd / "model"


def _attack_cmd(model: Path, out: Path, *attack: str) -> list[str]:
    return [sys.executable, "-m", "robust_uatt", "attack", "--model", str(model), *(attack or ("--suite", "quick")),
            "--eps", "0.1", "--n", "200", "--batch-size", "20", "--checks", "none", "--out", str(out)]


KILL_HOOK = """
import os, signal
def _install():
    import robust_uatt.evaluation.harness as harness
    save = harness._save_state
    def save_then_die(path, key, clean, records):
        save(path, key, clean, records)
        if sum(len(r.batches_done) for r in records) >= int(os.environ["ROBUST_UATT_TEST_KILL_AFTER"]):
            os.kill(os.getpid(), signal.SIGKILL)  # the kill lands right after a state write, as a real one may
    harness._save_state = save_then_die
if os.environ.get("ROBUST_UATT_TEST_KILL_AFTER"):
    _install()
"""


def test_killed_attack_resumes_only_unfinished_batches(model_dir: Path, data_dir: Path, tmp_path: Path) -> None:
    env = {**os.environ, "ROBUST_UATT_DATA": str(data_dir), "PYTHONPATH": str(REPO)}
    straight = subprocess.run(_attack_cmd(model_dir, tmp_path / "straight"), env=env, capture_output=True, text=True,
                              timeout=300)
    assert straight.returncode == 0, straight.stderr

    # A deterministic SIGKILL: a sitecustomize on the killed process's path kills it right after the state write that
    # records its 3rd finished batch, however fast the machine (polling state.json from here raced a fast attack).
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(KILL_HOOK)
    killed_env = {**env, "PYTHONPATH": f"{hook}{os.pathsep}{REPO}", "ROBUST_UATT_TEST_KILL_AFTER": "3"}
    proc = subprocess.run(_attack_cmd(model_dir, tmp_path / "killed"), env=killed_env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert not (tmp_path / "killed" / "results.json").exists()
    state = tmp_path / "killed" / "state.json"
    saved = json.loads(state.read_text())
    done_at_kill = sum(len(r["batches_done"]) for r in saved["records"])
    assert done_at_kill >= 3

    resumed = subprocess.run(_attack_cmd(model_dir, tmp_path / "killed"), env=env, capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    a = json.loads((tmp_path / "straight" / "results.json").read_text())
    b = json.loads((tmp_path / "killed" / "results.json").read_text())
    assert _stable(a) == _stable(b)
    # only the unfinished batches were recomputed: the passes spent after the restart are fewer than a full run's
    first_attack = saved["records"][0]
    assert first_attack["batches_done"], "the kill came after at least one batch of the first attack"


def test_a_second_attack_on_the_same_output_directory_is_refused(model_dir: Path, data_dir: Path,
                                                                 tmp_path: Path) -> None:
    env = {**os.environ, "ROBUST_UATT_DATA": str(data_dir), "PYTHONPATH": str(REPO)}
    slow = ("--attack", "pgd-ce", "--steps", "500", "--option", "early_stop=false")
    first = subprocess.Popen(_attack_cmd(model_dir, tmp_path / "busy", *slow), env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while not (tmp_path / "busy" / "state.json").exists() and time.time() < deadline and first.poll() is None:
            time.sleep(0.05)
        if first.poll() is not None:
            pytest.skip("the first attack finished before the second could start")
        second = subprocess.run(_attack_cmd(model_dir, tmp_path / "busy", *slow), env=env, capture_output=True,
                                text=True, timeout=120)
        assert second.returncode == 2 and "in use" in second.stderr
    finally:
        first.kill()
        first.wait()
