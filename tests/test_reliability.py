"""Reliability: kills, interrupts, locks, atomic writes, full disks, hostile files and bad input (training side).

The subprocess tests run ``python -m robust_uatt train`` exactly as a user does and kill it with real signals.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import robust_uatt.training.loop as train_mod
import robust_uatt.utils.files as io_mod
from robust_uatt import cli
from robust_uatt.utils.errors import UserError
from robust_uatt.utils.files import RunLock, load_tensors, load_torch_weights, save_tensors, write_json
from tests.conftest import REPO

TINY = """
description = "tiny VGG for fault injection"
dataset = "cifar10"
[model]
arch = "vgg16"
width = 0.125
dropout = 0.1
[data]
augment = "crop-flip"
[train]
epochs = {epochs}
batch_size = 25
optimizer = "adam"
lr = 0.003
weight_decay = 0.0
schedule = "cosine"
limit_train = {limit}
limit_val = 50
limit_test = 50
checkpoint_every = {every}
"""
SEED = "7"


def _recipe_file(folder: Path, epochs: int = 3, limit: int = 600, every: int = 5) -> Path:
    path = folder / "tiny.toml"
    path.write_text(TINY.format(epochs=epochs, limit=limit, every=every))
    return path


def _env(data_dir: Path) -> dict[str, str]:
    # One thread in every process: the same float summation order in the reference and the resumed run.
    return {**os.environ, "ROBUST_UATT_DATA": str(data_dir), "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1", "COLUMNS": "200"}


def _train_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "robust_uatt", "train", *args, "--device", "cpu", "--no-download"]


def _start(folder: Path, data_dir: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(_train_cmd(*args), cwd=folder, env=_env(data_dir), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def _same_weights(a: Path, b: Path) -> None:
    ta, tb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert ta.keys() == tb.keys()
    different = [k for k in ta if not torch.equal(ta[k], tb[k])]
    assert not different, f"not bit-identical: {different[:5]}"


def _metrics(run: Path) -> list[dict]:
    timing = ("images_per_s", "epoch_seconds")
    return [{k: v for k, v in json.loads(line).items() if k not in timing}
            for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    """An uninterrupted run of the tiny recipe, seed 7, in a subprocess."""
    folder = tmp_path_factory.mktemp("reference")
    recipe = _recipe_file(folder)
    out = subprocess.run(_train_cmd(str(recipe), "--out", "run", "--seed", SEED), cwd=folder, env=_env(data_dir),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return folder / "run"


# ---- 1. crash-safe training ------------------------------------------------------------------------------------

def test_sigkill_at_a_random_moment_then_resume_is_bit_identical(reference: Path, data_dir: Path,
                                                                 tmp_path: Path) -> None:
    recipe = _recipe_file(tmp_path)
    run = tmp_path / "run"
    for attempt, longest in enumerate((1.5, 0.5, 0.1)):  # a busy machine may be slower: then kill sooner
        proc = _start(tmp_path, data_dir, str(recipe), "--out", "run", "--seed", SEED)
        _wait_for(run / "checkpoint.safetensors", proc)
        delay = random.uniform(0.0, longest)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
        if not (run / "model.safetensors").exists():
            break
        shutil.rmtree(run)  # it finished before the kill: try again
    else:
        pytest.fail("every run finished before its kill")
    assert proc.returncode == -signal.SIGKILL
    assert (run / ".lock").exists()  # the killed process could not clean up its lock ...
    assert not (run / "model.safetensors").exists()
    # ... and may have died inside a checkpoint write: what that leaves is a temporary file next to the old checkpoint
    half = run / ".checkpoint.safetensors.killed.tmp"
    half.write_bytes((run / "checkpoint.safetensors").read_bytes()[:5000])
    load_tensors(run / "checkpoint.safetensors")  # the checkpoint itself is whole

    out = subprocess.run(_train_cmd("--resume", "run"), cwd=tmp_path, env=_env(data_dir), capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "resuming" in out.stderr
    _same_weights(reference, run)
    assert _metrics(reference) == _metrics(run)
    assert not list(run.glob(".*.tmp")) and not (run / ".lock").exists()


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupt_checkpoints_prints_the_resume_command_and_locks_out_a_second_writer(
        reference: Path, data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture, sig: int, code: int) -> None:
    recipe = _recipe_file(tmp_path)
    run = tmp_path / "run"
    proc = _start(tmp_path, data_dir, str(recipe), "--out", "run", "--seed", SEED)
    _wait_for(run / "checkpoint.safetensors", proc)
    # 4. one writer per run directory: while it runs, a second process is refused with one clear line
    for argv in (["train", "--resume", str(run)], ["train", str(recipe), "--out", str(run)]):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"in use by process {proc.pid}" in err, err
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == code, stderr
    assert "interrupted: checkpoint saved in" in stderr and "Traceback" not in stderr
    assert "resume with: robust-uatt train tiny --resume run" in stderr
    assert not (run / "model.safetensors").exists() and not (run / ".lock").exists()
    _, meta = load_tensors(run / "checkpoint.safetensors")
    assert meta["seed"] == int(SEED)
    if sig == signal.SIGINT:  # the printed command finishes the run, bit-identical to the uninterrupted one
        out = subprocess.run(_train_cmd("tiny", "--resume", "run"), cwd=tmp_path, env=_env(data_dir),
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        _same_weights(reference, run)


def test_deterministic_mode_is_on_for_cpu_training_and_restored_afterwards() -> None:
    from robust_uatt.utils.runtime import deterministic

    before = torch.are_deterministic_algorithms_enabled()
    with deterministic(torch.device("cpu")):
        assert torch.are_deterministic_algorithms_enabled()
    with deterministic(torch.device("cuda")):  # off on CUDA unless asked for (--deterministic)
        assert torch.are_deterministic_algorithms_enabled() == before
    assert torch.are_deterministic_algorithms_enabled() == before


# ---- 3. atomic writes -----------------------------------------------------------------------------------------

KILL_WRITER = textwrap.dedent("""
    import json, os, random, signal, sys, time
    import torch
    from robust_uatt.utils.files import write_json, save_tensors, load_tensors, remove_stale_temps
    folder = sys.argv[1]
    card, ckpt = os.path.join(folder, "card.json"), os.path.join(folder, "ckpt.safetensors")

    def write(i):
        write_json(card, {"i": i, "payload": [i] * 20000})
        save_tensors(ckpt, {"w": torch.full((50000,), float(i))}, {"i": i})

    write(0)
    random.seed(int(sys.argv[2]))
    kills = temps = 0
    for round in range(25):
        pid = os.fork()
        if pid == 0:
            i = 1
            while True:
                write(i)
                i += 1
        time.sleep(random.uniform(0.0, 0.05))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        kills += 1
        c = json.load(open(card))
        assert c["payload"] == [c["i"]] * 20000, "card.json is not one whole version"
        tensors, meta = load_tensors(ckpt)
        assert bool((tensors["w"] == meta["i"]).all()) and tensors["w"].numel() == 50000, "checkpoint mixed"
        temps += len(remove_stale_temps(folder))
    print(json.dumps({"kills": kills, "temps_left_by_kills": temps}))
""")


def test_a_kill_at_any_moment_leaves_the_old_or_the_new_file_whole(tmp_path: Path) -> None:
    seed = random.randrange(10**6)
    out = subprocess.run([sys.executable, "-c", KILL_WRITER, str(tmp_path), str(seed)], capture_output=True,
                         text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, (seed, out.stderr)
    assert json.loads(out.stdout.splitlines()[-1])["kills"] == 25
    assert sorted(p.name for p in tmp_path.iterdir()) == ["card.json", "ckpt.safetensors"]


def _disk_full_after(monkeypatch: pytest.MonkeyPatch, calls: int = 0, target: str = "") -> dict:
    """The ``calls``+1-th write whose file name contains ``target`` writes half its bytes, then ENOSPC."""
    real = io_mod._write_all
    state = {"seen": 0, "failed": 0}

    def write_all(fd: int, data: bytes) -> None:
        name = os.readlink(f"/proc/self/fd/{fd}") if os.path.exists(f"/proc/self/fd/{fd}") else ""
        if target in name:
            state["seen"] += 1
            if state["seen"] > calls:
                state["failed"] += 1
                real(fd, data[:len(data) // 2])
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fd, data)

    monkeypatch.setattr(io_mod, "_write_all", write_all)
    return state


def test_full_disk_keeps_the_previous_file_and_no_temporary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_json(tmp_path / "results.json", {"v": "old"})
    save_tensors(tmp_path / "ckpt.safetensors", {"w": torch.ones(3)}, {"v": "old"})
    _disk_full_after(monkeypatch)
    with pytest.raises(OSError) as e:
        write_json(tmp_path / "results.json", {"v": "new"})
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(tmp_path / "results.json")
    with pytest.raises(OSError):
        save_tensors(tmp_path / "ckpt.safetensors", {"w": torch.zeros(3)}, {"v": "new"})
    assert json.loads((tmp_path / "results.json").read_text()) == {"v": "old"}
    assert load_tensors(tmp_path / "ckpt.safetensors")[1] == {"v": "old"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.safetensors", "results.json"]
    assert oct((tmp_path / "ckpt.safetensors").stat().st_mode & 0o777) == oct(io_mod._umask_mode())


def _main(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str]:
    code = cli.main(argv)
    return code, capsys.readouterr().err


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_disk_full_during_training_is_one_line_exit_2_and_the_checkpoint_survives(
        tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    recipe = _recipe_file(tmp_path, epochs=1, limit=100, every=1)
    run = tmp_path / "run"
    state = _disk_full_after(monkeypatch, calls=2, target="checkpoint.safetensors")
    code, err = _main(["train", str(recipe), "--out", str(run), "--data-dir", str(data_dir), "--device", "cpu"], capsys)
    assert code == 2 and state["failed"] == 1
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"robust-uatt: error: {run / 'checkpoint.safetensors'}: No space left on device")
    assert f"robust-uatt train --resume {run}" in last and "Traceback" not in err
    tensors, meta = load_tensors(run / "checkpoint.safetensors")  # the second checkpoint, whole
    assert meta["step_in_epoch"] == 2
    assert not list(run.glob(".*.tmp")) and not (run / ".lock").exists() and not (run / "model.safetensors").exists()


def test_disk_full_before_the_first_checkpoint_leaves_nothing(tmp_path: Path, data_dir: Path,
                                                               monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture) -> None:
    recipe = _recipe_file(tmp_path, epochs=1, limit=100, every=1)
    before = _tree(tmp_path)
    _disk_full_after(monkeypatch, target="config.json")
    code, err = _main(["train", str(recipe), "--out", str(tmp_path / "run"), "--data-dir", str(data_dir),
                       "--device", "cpu"], capsys)
    assert code == 2 and err.count("\n") == 1 and "No space left on device" in err and "config.json" in err
    assert _tree(tmp_path) == before


def test_unwritable_output_directory(tmp_path: Path, data_dir: Path, capsys: pytest.CaptureFixture) -> None:
    recipe = _recipe_file(tmp_path)
    (tmp_path / "afile").write_text("")
    before = _tree(tmp_path)
    code, err = _main(["train", str(recipe), "--out", str(tmp_path / "afile" / "run")], capsys)
    assert code == 2 and err.count("\n") == 1 and "cannot write" in err
    if os.geteuid() != 0:  # root writes into a read-only directory anyway
        (tmp_path / "ro").mkdir(mode=0o500)
        before = _tree(tmp_path)
        code, err = _main(["train", str(recipe), "--out", str(tmp_path / "ro" / "run")], capsys)
        assert code == 2 and err.count("\n") == 1
    assert _tree(tmp_path) == before


# ---- 4. one writer per run directory ---------------------------------------------------------------------------

HOLDER = "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); " \
         "os.write(fd, b'{\"pid\": %d}' % os.getpid()); fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); " \
         "time.sleep(60)"


def test_a_live_lock_refuses_and_a_dead_owner_is_taken_over(tmp_path: Path) -> None:
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path / ".lock")], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(UserError, match=f"in use by process {holder.pid}"):
            RunLock(tmp_path).acquire()
        with pytest.raises(UserError, match="in use"):
            RunLock(tmp_path).check_free()
    finally:
        holder.kill()
        holder.wait()
    assert (tmp_path / ".lock").exists()  # SIGKILL left the file, but no lock on it
    with RunLock(tmp_path) as lock:
        assert lock.owner()["pid"] == os.getpid()
        with pytest.raises(UserError, match=f"in use by process {os.getpid()}"):
            RunLock(tmp_path).acquire()  # even from the same process: one writer
    assert not (tmp_path / ".lock").exists()


def test_lock_fallback_without_flock_uses_pid_and_start_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(io_mod, "fcntl", None)
    lock_file = tmp_path / ".lock"
    dead = subprocess.Popen([sys.executable, "-c", ""])
    dead.wait()
    parent = os.getppid()
    cases = [({"pid": dead.pid}, True),  # dead process
             ({"pid": parent, "start": "1"}, True),  # a reused pid: alive, but started at another time
             ({"pid": parent, "start": io_mod.process_start_time(parent)}, False)]  # the real owner, alive
    for owner, taken_over in cases:
        lock_file.write_text(json.dumps(owner))
        if taken_over:
            RunLock(tmp_path).acquire().release()
            assert not lock_file.exists()
        else:
            with pytest.raises(UserError, match=f"in use by process {parent}"):
                RunLock(tmp_path).acquire()


# ---- 5. safe loading ------------------------------------------------------------------------------------------

class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("container", ["torch.save", "raw pickle"])
def test_a_crafted_pickle_is_refused_and_runs_no_code(tmp_path: Path, container: str) -> None:
    marker = tmp_path / "PWNED"
    evil = tmp_path / "weights.pt"
    payload = {"conv.weight": torch.zeros(2), "x": _Evil(marker)}
    if container == "torch.save":
        torch.save(payload, evil)
    else:
        evil.write_bytes(pickle.dumps(payload))
    with pytest.raises(UserError, match="refused to load"):
        load_torch_weights(evil)
    assert not marker.exists()
    pickle.loads(pickle.dumps(_Evil(marker)))  # the payload is real: unpickling it normally does run the code
    assert marker.exists()
    torch.save({"state_dict": {"w": torch.ones(2)}}, tmp_path / "good.pt")  # plain weights still load
    assert torch.equal(load_torch_weights(tmp_path / "good.pt")["w"], torch.ones(2))


# ---- 6. bad input: one line, exit 2, nothing written ---------------------------------------------------------

def _bad_data(folder: Path, case: str) -> None:
    x, y = np.zeros((100, 32, 32, 3), np.uint8), np.arange(100) % 10
    test = folder / "cifar10_test.npz"
    np.savez(test, x=x, y=y)
    path = folder / "cifar10_train.npz"
    if case == "missing":
        return
    if case == "truncated":
        np.savez(path, x=x, y=y)
        path.write_bytes(path.read_bytes()[:3000])
    elif case == "nan images":
        bad = x.astype(np.float32)
        bad[0, 0, 0, 0] = np.nan
        np.savez(path, x=bad, y=y)
    elif case == "labels out of range":
        np.savez(path, x=x, y=y + 5)
    elif case == "wrong shape":
        np.savez(path, x=x[:, :, :, :1], y=y)
    elif case == "wrong dtype":
        np.savez(path, x=x.astype(np.int16), y=y)


@pytest.mark.parametrize("case, message", [
    ("missing", "data not found"),
    ("truncated", "truncated or corrupt"),
    ("nan images", "1 of them NaN/Inf"),
    ("labels out of range", "labels out of range"),
    ("wrong shape", "images must have shape"),
    ("wrong dtype", "images must be uint8"),
])
def test_bad_data_files(tmp_path: Path, capsys: pytest.CaptureFixture, case: str, message: str) -> None:
    data = tmp_path / "data"
    data.mkdir()
    _bad_data(data, case)
    recipe = _recipe_file(tmp_path)
    before = _tree(tmp_path)
    code, err = _main(["train", str(recipe), "--out", str(tmp_path / "run"), "--data-dir", str(data),
                       "--no-download"], capsys)
    assert code == 2 and err.count("\n") == 1 and message in err and "Traceback" not in err, err
    assert _tree(tmp_path) == before


def _resumable(reference: Path, folder: Path) -> Path:
    """A copy of the reference run as it was before its end: config + checkpoint, no weights."""
    run = folder / "run"
    run.mkdir()
    for name in ("config.json", "checkpoint.safetensors", "metrics.jsonl"):
        (run / name).write_bytes((reference / name).read_bytes())
    return run


@pytest.mark.parametrize("case, message", [
    ("truncated checkpoint", "corrupt or unreadable checkpoint"),
    ("checkpoint of another model", "does not fit the architecture"),
    ("checkpoint without its state", "not a resumable checkpoint"),
    ("config without recipe", "not a robust-uatt run configuration"),
    ("config with a typo", "did you mean epochs"),
    ("not a run", "nothing to resume"),
])
def test_bad_run_directory_on_resume(reference: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                     case: str, message: str) -> None:
    run = _resumable(reference, tmp_path)
    ckpt = run / "checkpoint.safetensors"
    if case == "truncated checkpoint":
        ckpt.write_bytes(ckpt.read_bytes()[:4000])
    elif case == "checkpoint of another model":
        tensors, meta = load_tensors(ckpt)
        tensors["model.classifier.1.weight"] = tensors["model.classifier.1.weight"][:3]
        save_tensors(ckpt, tensors, meta)
    elif case == "checkpoint without its state":
        tensors, meta = load_tensors(ckpt)
        save_tensors(ckpt, {k: v for k, v in tensors.items() if not k.startswith("rng.")}, meta)
    elif case == "config without recipe":
        (run / "config.json").write_text('{"seed": 1}')
    elif case == "config with a typo":
        config = json.loads((run / "config.json").read_text())
        config["recipe"]["train"]["epoch"] = config["recipe"]["train"].pop("epochs")
        (run / "config.json").write_text(json.dumps(config))
    else:
        ckpt.unlink()
    before = {p: p.read_bytes() for p in run.iterdir()}
    code, err = _main(["train", "--resume", str(run), "--no-download"], capsys)
    assert code == 2 and err.count("\n") == 1 and message in err and "Traceback" not in err, err
    assert {p: p.read_bytes() for p in run.iterdir()} == before


@pytest.mark.parametrize("args, message", [
    (["--seed", "-1"], "must lie in 0.."),
    (["--seed", str(2**64)], "must lie in 0.."),
    (["--epochs", "-2"], "--epochs must be a positive integer"),
    (["--preset", "fast"], "unknown preset"),
])
def test_bad_numbers_and_names(tmp_path: Path, capsys: pytest.CaptureFixture, args: list[str], message: str) -> None:
    before = _tree(tmp_path)
    try:
        code = cli.main(["train", "cifar10-vgg", "--out", str(tmp_path / "run"), *args])
    except SystemExit as e:  # argparse's own checks
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and message in err, err
    assert _tree(tmp_path) == before


@pytest.mark.parametrize("line, message", [
    ("lr = -0.1", "lr must be >= 0"),
    ("lr = nan", "finite"),
    ("momentum = 1.5", "momentum must be in [0, 1]"),
    ("checkpoint_evry = 3", "did you mean checkpoint_every"),
    ("checkpoint_every = -1", "checkpoint_every must be >= 0"),
])
def test_recipe_values_are_checked_with_file_and_key(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                     line: str, message: str) -> None:
    recipe = _recipe_file(tmp_path)
    key = line.split(" = ")[0]
    lines = [x for x in recipe.read_text().splitlines() if not x.startswith(key + " ")]
    recipe.write_text("\n".join(lines + [line]) + "\n")
    code, err = _main(["train", str(recipe), "--out", str(tmp_path / "run")], capsys)
    assert code == 2 and err.count("\n") == 1 and message in err and "tiny.toml" in err, err
    assert not (tmp_path / "run").exists()


# ---- 7. training guards ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("poison", ["inf loss", "inf weights"])
def test_divergence_stops_with_the_step_and_keeps_the_last_good_checkpoint(
        tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture,
        poison: str) -> None:
    recipe = _recipe_file(tmp_path, epochs=1, limit=150, every=1)
    if poison == "inf loss":  # the 4th loss (step 3) is infinite; the weights are still fine
        real_ce, calls = torch.nn.functional.cross_entropy, {"n": 0}

        def cross_entropy(*a, **k):
            calls["n"] += 1
            loss = real_ce(*a, **k)
            return loss * float("inf") if calls["n"] == 4 else loss

        monkeypatch.setattr(torch.nn.functional, "cross_entropy", cross_entropy)  # the loss every model trains on
        where, good_step = "non-finite loss (inf) at step 3", 3
    else:  # the optimizer step of step 2 leaves an infinite weight while that step's loss was finite
        real_make = train_mod.make_optimizer

        def make_optimizer(model, cfg):
            opt = real_make(model, cfg)
            step, calls = opt.step, {"n": 0}

            def poisoned_step(*a, **k):
                out = step(*a, **k)
                calls["n"] += 1
                if calls["n"] == 3:
                    with torch.no_grad():
                        weight = next(model.parameters())
                        weight[(0,) * weight.dim()] = float("inf")
                return out

            opt.step = poisoned_step
            return opt

        monkeypatch.setattr(train_mod, "make_optimizer", make_optimizer)
        where, good_step = "non-finite weights after step 2", 2
    run = tmp_path / "run"
    code, err = _main(["train", str(recipe), "--out", str(run), "--data-dir", str(data_dir), "--device", "cpu"], capsys)
    assert code == 3 and where in err.strip().splitlines()[-1] and str(run / "checkpoint.safetensors") in err, err
    tensors, meta = load_tensors(run / "checkpoint.safetensors")
    assert meta["step_in_epoch"] == good_step
    assert all(bool(torch.isfinite(v).all()) for v in tensors.values() if v.is_floating_point())
    assert not (run / "model.safetensors").exists() and not (run / ".lock").exists()


def test_model_input_is_never_non_finite() -> None:
    from robust_uatt.data.datasets import to_float

    assert to_float(torch.tensor([0, 255], dtype=torch.uint8)).tolist() == [0.0, 1.0]
    with pytest.raises(ValueError):
        to_float(torch.tensor([0.5, float("nan")]))
    with pytest.raises(TypeError):
        to_float(torch.tensor([1, 2], dtype=torch.int32))


def test_checkpoint_files_hold_no_pickle(reference: Path) -> None:
    for name in ("checkpoint.safetensors", "model.safetensors"):
        raw = (reference / name).read_bytes()
        header = json.loads(raw[8:8 + int.from_bytes(raw[:8], "little")])
        assert all(isinstance(v, dict) and "dtype" in v for k, v in header.items() if k != "__metadata__")
