"""Reliability, round 2 (issue 10): each test failed on the code before its fix.

Driven through ``robust_uatt.cli.main`` (in-process) or ``python -m robust_uatt`` (subprocesses) on a tiny MLP
trained in seconds on the synthetic data of conftest.py.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from robust_uatt import cli
from tests.conftest import REPO

TINY = """
description = "tiny MLP for reliability tests"
dataset = "cifar10"
[model]
arch = "mlp"
hidden = 16
[train]
epochs = 1
batch_size = 25
optimizer = "adam"
lr = 0.003
limit_train = 100
limit_val = 50
limit_test = 50
"""


def main(*argv: str) -> tuple[int, str, str]:
    """Run the CLI in-process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main(list(argv))
        except SystemExit as e:
            code = e.code
    return code, out.getvalue(), err.getvalue()


def one_line_error(code: int, err: str) -> None:
    assert code == 2, err
    assert err.startswith("robust-uatt: error:") and err.count("\n") == 1 and "Traceback" not in err, err


def env(data_dir: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "ROBUST_UATT_DATA": str(data_dir), "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1",
            "COLUMNS": "200", **extra}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    """A finished run of the tiny recipe (its folder)."""
    folder = tmp_path_factory.mktemp("tiny")
    (folder / "tiny.toml").write_text(TINY)
    code, _, err = main("train", str(folder / "tiny.toml"), "--out", str(folder / "run"), "--data-dir",
                        str(data_dir), "--no-download", "--device", "cpu")
    assert code == 0, err
    return folder / "run"


def attack(tiny: Path, data_dir: Path, out: Path, *extra: str) -> tuple[int, str, str]:
    return main("attack", "--model", str(tiny), "--attack", "pgd-ce", "--steps", "3", "--eps", "8/255", "--n", "20",
                "--batch-size", "10", "--data-dir", str(data_dir), "--no-download", "--device", "cpu",
                "--out", str(out), *extra)


# ---- 1. the run lock never follows a link and refuses what is not a regular file --------------------------------

def test_a_symlinked_lock_file_is_refused_and_its_target_untouched(tiny: Path, data_dir: Path, tmp_path: Path) -> None:
    victim = tmp_path / "v.txt"
    victim.write_text("precious\n")
    out = tmp_path / "d"
    out.mkdir()
    (out / ".lock").symlink_to(victim)
    code, _, err = attack(tiny, data_dir, out)
    one_line_error(code, err)
    assert "symbolic link" in err
    assert victim.read_text() == "precious\n"
    assert not (out / "state.json").exists() and not (out / "results.json").exists()


def test_a_lock_file_that_is_a_fifo_or_a_link_to_dev_zero_is_one_line(tiny: Path, data_dir: Path,
                                                                      tmp_path: Path) -> None:
    fifo_dir, zero_dir = tmp_path / "fifo", tmp_path / "zero"
    fifo_dir.mkdir()
    zero_dir.mkdir()
    os.mkfifo(fifo_dir / ".lock")
    (zero_dir / ".lock").symlink_to("/dev/zero")
    for out in (fifo_dir, zero_dir):
        code, _, err = attack(tiny, data_dir, out)
        one_line_error(code, err)
        assert not (out / "results.json").exists()


def test_train_into_a_directory_with_a_symlinked_lock_is_refused(tiny: Path, data_dir: Path, tmp_path: Path) -> None:
    victim = tmp_path / "v.txt"
    victim.write_text("precious\n")
    out = tmp_path / "run"
    out.mkdir()
    (out / ".lock").symlink_to(victim)
    code, _, err = main("train", str(tiny.parent / "tiny.toml"), "--out", str(out), "--data-dir", str(data_dir),
                        "--no-download", "--device", "cpu")
    one_line_error(code, err)
    assert victim.read_text() == "precious\n" and not (out / "model.safetensors").exists()


# ---- 2. an attack that cannot move is refused; option values are validated before anything is written -----------

@pytest.mark.parametrize("extra, message", [
    (["--option", "restarts=0"], "restarts"),
    (["--option", "restarts=-1"], "restarts"),
    (["--alpha", "0"], "alpha"),
    (["--option", "restarts=abc"], "restarts"),
    (["--option", "restarts=inf"], "restarts"),
    (["--option", "restarts=1.5"], "restarts"),
    (["--option", "early_stop=maybe"], "early_stop"),
    (["--attack", "pgd-bpda", "--option", "tau=abc"], "tau"),
    (["--attack", "pgd-bpda", "--option", "tau=0"], "tau"),
    (["--attack", "pgd-eq14", "--option", "grad_path=sideways"], "grad_path"),
    (["--attack", "autoattack", "--option", "version=bogus"], "version"),
    (["--option", "source_model=x"], "source_model"),
])
def test_attack_options_are_validated_before_the_output_exists(tiny: Path, data_dir: Path, tmp_path: Path,
                                                               extra: list[str], message: str) -> None:
    out = tmp_path / "out"
    code, _, err = attack(tiny, data_dir, out, *extra)
    one_line_error(code, err)
    assert message in err
    assert not out.exists()


def test_a_suite_step_count_of_zero_is_refused_not_the_default(tiny: Path, data_dir: Path, tmp_path: Path) -> None:
    suite = tmp_path / "zero.toml"
    suite.write_text('description = "x"\n[[attacks]]\nname = "pgd-ce"\nsteps = 0\n')
    out = tmp_path / "out"
    code, _, err = main("attack", "--model", str(tiny), "--suite", str(suite), "--n", "20", "--data-dir",
                        str(data_dir), "--no-download", "--device", "cpu", "--out", str(out))
    one_line_error(code, err)
    assert "zero.toml" in err and "steps" in err and not out.exists()
    suite.write_text('description = "x"\n[[attacks]]\nname = "pgd-ce"\noptions = { restarts = 0 }\n')
    code, _, err = main("attack", "--model", str(tiny), "--suite", str(suite), "--n", "20", "--data-dir",
                        str(data_dir), "--no-download", "--device", "cpu", "--out", str(out))
    one_line_error(code, err)
    assert "zero.toml" in err and "restarts" in err and not out.exists()


# ---- 3. a killed-and-rerun attack on a stochastic model ends as an uninterrupted one -----------------------------

STOCHASTIC = '''
import torch
from torch import nn


class Noisy(nn.Module):
    """A linear classifier whose "sample" policy adds strong noise from torch's global generator."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(3 * 32 * 32, 10)
        self.policy = "mean"

    def forward(self, x):
        logits = self.linear(x.flatten(1))
        if self.policy == "sample":
            logits = logits + 0.3 * torch.randn_like(logits)
        return logits


def build():
    return Noisy()
'''


def _simulate_kill(out: Path, keep_batches: int, batch_size: int) -> None:
    """Rewrite state.json as a kill after ``keep_batches`` batches of the first attack leaves it; drop the results."""
    state = json.loads((out / "state.json").read_text())
    rec = state["records"][0]
    redo = {i for b in rec["batches_done"] if b >= keep_batches
            for i in rec["attacked"][b * batch_size:(b + 1) * batch_size]}
    rec["batches_done"] = [b for b in rec["batches_done"] if b < keep_batches]
    rec["broken"] = [i for i in rec["broken"] if i not in redo]
    rec["done"] = False
    (out / "state.json").write_text(json.dumps(state))
    (out / "results.json").unlink()
    (out / "results.md").unlink()


def test_resumed_attack_on_a_stochastic_model_matches_an_uninterrupted_one(data_dir: Path, tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "rel2_noisy.py").write_text(STOCHASTIC)
    monkeypatch.syspath_prepend(str(tmp_path))

    def run(out: Path) -> dict:
        code, _, err = main("attack", "--model-factory", "rel2_noisy:build", "--dataset", "cifar10", "--policy",
                            "sample", "--eot", "2", "--attack", "pgd-ce", "--steps", "1", "--eps", "1/255", "--n",
                            "200", "--batch-size", "2", "--checks", "none", "--data-dir", str(data_dir),
                            "--no-download", "--device", "cpu", "--out", str(out))
        assert code == 0, err
        return json.loads((out / "results.json").read_text())

    straight = run(tmp_path / "straight")
    run(tmp_path / "killed")
    _simulate_kill(tmp_path / "killed", keep_batches=2, batch_size=2)
    resumed = run(tmp_path / "killed")
    assert resumed["per_example"] == straight["per_example"]
    assert resumed["robust_accuracy"] == straight["robust_accuracy"]
    assert [a["broken"] for a in resumed["attacks"]] == [a["broken"] for a in straight["attacks"]]


# ---- 4. a name read from a file is data: sanitized for paths, escaped for the terminal ---------------------------

def craft_checkpoint(tiny: Path, path: Path, **recipe_changes: object) -> Path:
    """The tiny run's weights with its header's recipe edited (name, model size, ...): what a stranger could send."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    src = tiny / "model.safetensors"
    with safe_open(str(src), framework="pt") as f:
        meta = dict(f.metadata())
    recipe = json.loads(meta["recipe"])
    for key, value in recipe_changes.items():
        if key in recipe:
            recipe[key] = value
        else:
            recipe["model"][key] = value
    meta["recipe"] = json.dumps(recipe)
    save_file(load_file(str(src)), str(path), metadata=meta)
    return path


@pytest.mark.parametrize("name", ["../../escaped", "<absolute>", "a/../../b", ".."])
def test_a_recipe_name_from_a_checkpoint_never_leaves_the_runs_directory(tiny: Path, data_dir: Path, tmp_path: Path,
                                                                         name: str) -> None:
    outside = tmp_path / "outside"
    weights = craft_checkpoint(tiny, tmp_path / "w.safetensors", name=name.replace("<absolute>", str(outside)))
    runs = tmp_path / "deep" / "er" / "runs"
    code, out, err = main("attack", "--model", str(weights), "--attack", "pgd-ce", "--steps", "2", "--n", "20",
                          "--checks", "none", "--runs-dir", str(runs), "--data-dir", str(data_dir), "--no-download",
                          "--device", "cpu")
    assert code == 0, err
    written = Path(out.strip().splitlines()[-1]).resolve()
    assert written.is_file() and (runs / "attacks").resolve() in written.parents
    assert not outside.exists() and not (tmp_path / "deep" / "escaped").exists()


def test_exporting_a_run_whose_recipe_name_climbs_out_writes_inside_the_destination(tiny: Path, data_dir: Path,
                                                                                    tmp_path: Path) -> None:
    from robust_uatt.training.export import export_run

    run = tmp_path / "run"
    shutil.copytree(tiny, run)
    craft_checkpoint(tiny, run / "model.safetensors", name="../../escaped")
    dest = tmp_path / "a" / "b" / "weights"
    weights, card = export_run(run, dest=dest, data_dir=str(data_dir))
    assert weights.parent == dest and card.parent == dest and not (tmp_path / "escaped.safetensors").exists()


HOSTILE = "[/bold]\x1b]0;owned\x07\x1b[31mred[bold"


def test_a_hostile_recipe_name_prints_as_text(tiny: Path, data_dir: Path, tmp_path: Path) -> None:
    weights = craft_checkpoint(tiny, tmp_path / "w.safetensors", name=HOSTILE)
    code, out, err = main("attack", "--model", str(weights), "--attack", "pgd-ce", "--steps", "2", "--n", "20",
                          "--runs-dir", str(tmp_path / "runs"), "--data-dir", str(data_dir), "--no-download",
                          "--device", "cpu")
    assert code == 0, err
    assert "\x1b" not in out and "\x07" not in out and "[/bold]" in out  # the name, shown as text
    results = Path(out.strip().splitlines()[-1])
    assert json.loads(results.read_text())["model"]["name"] == HOSTILE  # recorded as it is


def test_compare_prints_a_hostile_model_name_as_text(tiny: Path, data_dir: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "400")  # a wide table: names are not wrapped across lines
    code, out, err = attack(tiny, data_dir, tmp_path / "a", "--checks", "none")
    assert code == 0, err
    result = json.loads((tmp_path / "a" / "results.json").read_text())
    result["model"]["name"] = HOSTILE
    result.update(checks_level="fast", valid=True, verdict="valid")  # a checked result: compare ranks it
    (tmp_path / "a" / "results.json").write_text(json.dumps(result))
    board = tmp_path / "board"
    board.mkdir()
    (board / "cifar10_Linf.csv").write_text(
        "model_id,name,architecture,clean_acc,autoattack_acc,eps,dataset,unreliable\n"
        "Standard,Standard,WideResNet-28-10,94.78,0.0,8/255,cifar10,False\n"
        "Evil[/bold],\x1b[31mx,ResNet-18[red,90.0,50.0,8/255,cifar10,False\n")
    code, out, err = main("compare", "--model", str(tmp_path / "a"), "--leaderboard", str(board), "--out",
                          str(tmp_path / "c.json"))
    assert code == 0, err
    assert "\x1b" not in out and "[/bold]" in out and "Evil[/bold]" in out


# ---- 5. the "already holds a run" check is repeated under the lock ----------------------------------------------

def test_a_run_that_finishes_while_a_second_train_loads_data_is_not_overwritten(
        tiny: Path, data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from robust_uatt.utils.files import RunLock

    target = tmp_path / "run"
    original = RunLock.acquire

    def slow_data_then_lock(self: RunLock) -> RunLock:
        # run A finishes in `target` after B's first check (B was loading its data), just before B takes the lock
        if not target.exists():
            shutil.copytree(tiny, target)
        return original(self)

    monkeypatch.setattr(RunLock, "acquire", slow_data_then_lock)
    code, _, err = main("train", str(tiny.parent / "tiny.toml"), "--out", str(target), "--seed", "3", "--data-dir",
                        str(data_dir), "--no-download", "--device", "cpu")
    one_line_error(code, err)
    assert "already holds a run" in err
    for name in ("model.safetensors", "model_card.json", "config.json", "metrics.jsonl"):
        assert (target / name).read_bytes() == (tiny / name).read_bytes(), name


# ---- 6. small inputs that would cost a lot ------------------------------------------------------------------------

def test_a_small_checkpoint_claiming_a_huge_model_is_refused_before_building_it(tiny: Path, data_dir: Path,
                                                                               tmp_path: Path) -> None:
    """The recipe says hidden=100000 (a 40 GB MLP); the file holds the tiny weights. Shapes are compared on the meta
    device, so this fails with 'does not fit' under a 6 GB address-space limit instead of trying to allocate."""
    resource = pytest.importorskip("resource")
    weights = craft_checkpoint(tiny, tmp_path / "huge.safetensors", hidden=100_000)
    assert weights.stat().st_size < 1_000_000

    def limit_memory() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (6 * 2**30, 6 * 2**30))

    proc = subprocess.run([sys.executable, "-m", "robust_uatt", "attack", "--model", str(weights), "--n", "20",
                           "--out", str(tmp_path / "out"), "--no-download"], env=env(data_dir), cwd=tmp_path,
                          capture_output=True, text=True, timeout=300, preexec_fn=limit_memory)
    one_line_error(proc.returncode, proc.stderr)
    assert "does not fit the architecture" in proc.stderr and not (tmp_path / "out").exists()


HUGE_EPS = [
    ["attack", "--model", "TINY", "--eps", "1e99999999"],
    ["attack", "--model", "TINY", "--alpha", "1e99999999"],
    ["attack", "--model", "TINY", "--eps", "1e-99999999/1e99999999"],
    ["curve", "--model", "TINY", "--eps", "0,1e99999999"],
]
RUN_EACH = """
import contextlib, io, json, sys
from robust_uatt import cli
for argv in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = cli.main(argv)
    print(json.dumps([code, err.getvalue()]), flush=True)
"""


def test_an_eps_with_a_huge_exponent_is_refused_at_once(tiny: Path, data_dir: Path, tmp_path: Path) -> None:
    """Fraction('1e99999999') computed 10**99999999 (minutes): run in a subprocess, so a hang fails by timeout."""
    argvs = [[str(tiny) if a == "TINY" else a for a in argv] + ["--out", str(tmp_path / "out")] for argv in HUGE_EPS]
    proc = subprocess.run([sys.executable, "-c", RUN_EACH, json.dumps(argvs)], env=env(data_dir), cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    answers = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(answers) == len(HUGE_EPS), proc.stderr
    for (code, err), argv in zip(answers, HUGE_EPS):
        one_line_error(code, err)
        assert "eps" in err or "alpha" in err, argv
    assert not (tmp_path / "out").exists()


def test_an_eps_longer_than_any_radius_is_refused(tiny: Path, data_dir: Path, tmp_path: Path) -> None:
    code, _, err = main("attack", "--model", str(tiny), "--eps", "0." + "1" * 5000, "--data-dir", str(data_dir),
                        "--out", str(tmp_path / "out"))
    one_line_error(code, err)
    assert "eps" in err and len(err) < 300 and not (tmp_path / "out").exists()
    from robust_uatt.utils.eps import parse_eps
    from robust_uatt.utils.errors import UserError

    with pytest.raises(UserError, match="cannot parse eps"):
        parse_eps("0." + "1" * 5000)


# ---- 7. tracebacks left: each is now one line, and nothing is left behind ----------------------------------------

DEEP = "[" * 100_000 + "]" * 100_000


def resumable(tiny: Path, where: Path) -> Path:
    """A copy of the tiny run that looks killed after its last checkpoint (weights removed): --resume finishes it."""
    shutil.copytree(tiny, where)
    (where / "model.safetensors").unlink()
    (where / "model_card.json").unlink()
    return where


def test_deeply_nested_json_in_a_checkpoint_header_config_or_results_is_one_line(tiny: Path, data_dir: Path,
                                                                                 tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    weights = tmp_path / "deep.safetensors"
    save_file(load_file(str(tiny / "model.safetensors")), str(weights), metadata={"recipe": DEEP})
    code, _, err = attack(tiny, data_dir, tmp_path / "a", "--source", str(weights))
    one_line_error(code, err)
    code, _, err = main("attack", "--model", str(weights), "--data-dir", str(data_dir), "--out", str(tmp_path / "b"))
    one_line_error(code, err)
    run = resumable(tiny, tmp_path / "run")
    (run / "config.json").write_text(DEEP)
    code, _, err = main("train", "--resume", str(run), "--data-dir", str(data_dir), "--device", "cpu")
    one_line_error(code, err)
    results = tmp_path / "r" / "results.json"
    results.parent.mkdir()
    results.write_text(DEEP)
    code, _, err = main("compare", "--model", str(results), "--leaderboard", str(tmp_path), "--out",
                        str(tmp_path / "c.json"))
    assert code in (0, 2) and "Traceback" not in err and "RecursionError" not in err, err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_transfer_without_a_source_or_from_another_dataset_is_one_line(tiny: Path, data_dir: Path,
                                                                       tmp_path: Path) -> None:
    code, _, err = attack(tiny, data_dir, tmp_path / "a", "--attack", "transfer")
    one_line_error(code, err)
    assert "--source" in err and not (tmp_path / "a").exists()
    recipe = tmp_path / "mnist.toml"
    recipe.write_text(TINY.replace('dataset = "cifar10"', 'dataset = "mnist"'))
    code, _, err = main("train", str(recipe), "--out", str(tmp_path / "mnist"), "--data-dir", str(data_dir),
                        "--no-download", "--device", "cpu")
    assert code == 0, err
    code, _, err = attack(tiny, data_dir, tmp_path / "b", "--source", str(tmp_path / "mnist"))
    one_line_error(code, err)
    assert "mnist" in err and not (tmp_path / "b").exists()


FACTORIES = '''
import torch
from torch import nn


def raises():
    raise ValueError("no weights here")


def wrong_input():
    return nn.Linear(5, 10)


def wrong_classes():
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 3))


def not_a_module():
    return 42


broken_import = None
'''


@pytest.mark.parametrize("spec, message", [
    (":build", "module:function"), (".rel2_factories:raises", "module:function"),
    ("rel2_factories:", "module:function"),
    ("rel2_factories:raises", "ValueError: no weights here"), ("rel2_factories:wrong_input", "cannot classify"),
    ("rel2_factories:wrong_classes", "(N, 10)"), ("rel2_factories:not_a_module", "nn.Module"),
    ("rel2_factories:broken_import", "not callable"), ("rel2_no_such_module:f", "cannot import"),
])
def test_a_model_factory_that_fails_is_one_line_and_leaves_no_directory(data_dir: Path, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch, spec: str,
                                                                        message: str) -> None:
    (tmp_path / "rel2_factories.py").write_text(FACTORIES)
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "out"
    code, _, err = main("attack", "--model-factory", spec, "--dataset", "cifar10", "--n", "20", "--data-dir",
                        str(data_dir), "--no-download", "--device", "cpu", "--out", str(out))
    one_line_error(code, err)
    assert message in err and not out.exists()


def test_a_suite_file_that_is_not_utf8_is_one_line(tiny: Path, data_dir: Path, tmp_path: Path) -> None:
    suite = tmp_path / "latin1.toml"
    suite.write_bytes('description = "caf\xe9"\n[[attacks]]\nname = "fgsm"\n'.encode("latin-1"))
    code, _, err = main("attack", "--model", str(tiny), "--suite", str(suite), "--data-dir", str(data_dir),
                        "--out", str(tmp_path / "out"))
    one_line_error(code, err)
    assert "latin1.toml" in err and not (tmp_path / "out").exists()


@pytest.mark.parametrize("key, value", [("lr", "3.5e37"), ("lr", "1e300"), ("weight_decay", "3.5e38")])
def test_an_overflowing_learning_rate_is_refused_before_the_run_directory_exists(data_dir: Path, tmp_path: Path,
                                                                                key: str, value: str) -> None:
    recipe = tmp_path / "big.toml"
    recipe.write_text(TINY.replace('lr = 0.003', f'lr = 0.003\n{key} = {value}' if key != "lr" else f'lr = {value}'))
    code, _, err = main("train", str(recipe), "--out", str(tmp_path / "run"), "--data-dir", str(data_dir),
                        "--no-download", "--device", "cpu")
    one_line_error(code, err)
    assert key in err and "big.toml" in err and not (tmp_path / "run").exists()


def test_selftest_with_a_negative_seed_is_one_line() -> None:
    code, _, err = main("selftest", "--seed", "-1")
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err and "seed" in err, err


@pytest.mark.parametrize("damage", ["config not a recipe", "config seed out of range", "config argv not a list",
                                    "metrics not utf-8", "metrics not json", "metrics not records",
                                    "metrics lines missing"])
def test_a_damaged_run_directory_on_resume_is_one_line_or_resumes(tiny: Path, data_dir: Path, tmp_path: Path,
                                                                  damage: str) -> None:
    run = resumable(tiny, tmp_path / "run")
    config = json.loads((run / "config.json").read_text())
    if damage == "config not a recipe":
        config["recipe"] = {"name": "x", "dataset": "cifar10", "model": {"arch": "mlp", "hidden": "wide"}}
    elif damage == "config seed out of range":
        config["seed"] = 2**70
    elif damage == "config argv not a list":
        config["argv"] = 5
    (run / "config.json").write_text(json.dumps(config))
    metrics = run / "metrics.jsonl"
    if damage == "metrics not utf-8":
        metrics.write_bytes(b"\xff\xfe\n")
    elif damage == "metrics not json":
        metrics.write_text("{not json\n")
    elif damage == "metrics not records":
        metrics.write_text("[1, 2]\n")
    elif damage == "metrics lines missing":
        metrics.write_text("")
    code, out, err = main("train", "--resume", str(run), "--data-dir", str(data_dir), "--device", "cpu")
    if damage == "config argv not a list":  # harmless: the run finishes, its card records no command
        assert code == 0, err
        assert json.loads((run / "model_card.json").read_text())["command"] == ""
    else:
        one_line_error(code, err)
        assert not (run / "model.safetensors").exists()


def test_a_fresh_run_that_diverges_before_its_first_checkpoint_leaves_nothing(tiny: Path, data_dir: Path,
                                                                              tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import torch.nn.functional as F

    real = F.cross_entropy
    monkeypatch.setattr(F, "cross_entropy", lambda *a, **k: real(*a, **k) * float("inf"))
    run = tmp_path / "run"
    code, _, err = main("train", str(tiny.parent / "tiny.toml"), "--out", str(run), "--data-dir", str(data_dir),
                        "--no-download", "--device", "cpu")
    assert code == 3 and "diverged" in err, err
    assert not run.exists()


# ---- 8. RobustBench weights load with weights_only=True whatever the environment says ----------------------------

class _Payload:
    """Unpickling this opens (creates) the marker file: code that must never run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_pickle_in_robustbench_weights_never_runs_even_with_torch_force_no_weights_only(
        data_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("robustbench")
    import torch

    marker = tmp_path / "code-ran"
    weights = tmp_path / "models" / "cifar10" / "Linf" / "Standard.pt"
    weights.parent.mkdir(parents=True)
    torch.save({"state_dict": {"w": torch.zeros(1)}, "extra": _Payload(marker)}, weights)
    proc = subprocess.run([sys.executable, "-m", "robust_uatt", "attack", "--robustbench", "Standard", "--model-dir",
                           str(tmp_path / "models"), "--n", "20", "--out", str(tmp_path / "out"), "--no-download"],
                          env=env(data_dir, TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD="1"), cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    one_line_error(proc.returncode, proc.stderr)
    assert not marker.exists(), "the pickled payload ran"
    assert "weights_only" in proc.stderr and not (tmp_path / "out").exists()


# ---- 9. an attack rerun removes the temporary files a killed writer left ------------------------------------------

def test_an_attack_rerun_removes_temporary_files_left_by_a_kill(tiny: Path, data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    left = [out / ".state.json.k1ll3d.tmp", out / ".results.json.x9.tmp"]
    for tmp in left:
        tmp.write_text('{"half": ')
    code, _, err = attack(tiny, data_dir, out, "--checks", "none")
    assert code == 0, err
    assert not any(p.exists() for p in left) and (out / "results.json").is_file()
    assert not list(out.glob(".*.tmp"))


# ---- 10. echoed values cannot break the one-line message; the fuzz tests are reproducible in CI -------------------

@pytest.mark.parametrize("argv", [
    ["attack", "--preset", "\n"],
    ["attack", "--model", "m\n.safetensors"],
    ["attack", "--model", "missing.safetensors", "--attack", "pgd\x1b[31m\n"],
    ["attack", "--model", "missing.safetensors", "--eps", "\u2028"],
    ["attack", "--model", "missing.safetensors", "--policy", "a\x85b"],
    ["train", "zoo\x1b]0;title\x07\r\nname"],
    ["curve", "--model", "x", "--eps", "0,\x0c"],
    ["--\n"],
])
def test_an_error_echoing_control_characters_is_one_line_of_text(argv: list[str]) -> None:
    code, _, err = main(*argv)
    assert code == 2, err
    assert err.startswith("robust-uatt: error:") and len(err.splitlines()) == 1 and err.endswith("\n"), repr(err)
    assert not any(ord(c) < 32 or 0x7f <= ord(c) < 0xa0 or c in "\u2028\u2029" for c in err[:-1]), repr(err)


PROFILE = "from hypothesis import settings; import tests.hypothesis_profiles; print(settings.default.derandomize)"


@pytest.mark.parametrize("environment, derandomized", [({"CI": "true"}, "True"),
                                                       ({"CI": "true", "HYPOTHESIS_PROFILE": "explore"}, "True"),
                                                       ({"HYPOTHESIS_PROFILE": "explore"}, "False"),
                                                       ({}, "True")])  # README command (2): no CI variable
def test_hypothesis_is_derandomized_in_ci_and_explores_only_when_asked(data_dir: Path, environment: dict[str, str],
                                                                       derandomized: str) -> None:
    base = {k: v for k, v in env(data_dir).items() if k not in ("CI", "HYPOTHESIS_PROFILE")}
    proc = subprocess.run([sys.executable, "-c", PROFILE], env={**base, **environment}, cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == derandomized


# ---- 11. smaller: factory from the current directory, curve --steps and lock, --resume with other settings ---------

def test_a_model_factory_in_the_current_directory_imports_without_python_m(data_dir: Path, tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The installed console script has no current directory on sys.path (``python -m`` has): emulated here."""
    (tmp_path / "rel2_cwd_factory.py").write_text(STOCHASTIC)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", str(tmp_path))])
    code, _, err = main("attack", "--model-factory", "rel2_cwd_factory:build", "--dataset", "cifar10", "--attack",
                        "fgsm", "--n", "20", "--checks", "none", "--data-dir", str(data_dir), "--no-download",
                        "--device", "cpu", "--out", str(tmp_path / "out"))
    assert code == 0, err
    assert str(tmp_path) not in sys.path  # the current directory was added for the import only


def test_curve_refuses_steps_with_a_suite(tiny: Path, data_dir: Path, tmp_path: Path) -> None:
    code, _, err = main("curve", "--model", str(tiny), "--suite", "quick", "--steps", "5", "--eps", "0,8/255",
                        "--data-dir", str(data_dir), "--out", str(tmp_path / "c"))
    one_line_error(code, err)
    assert "--steps" in err and not (tmp_path / "c").exists()


def test_curve_takes_the_output_lock(tiny: Path, data_dir: Path, tmp_path: Path) -> None:
    from robust_uatt.utils.files import RunLock

    out = tmp_path / "c"
    with RunLock(out):  # another curve is writing here
        code, _, err = main("curve", "--model", str(tiny), "--attack", "pgd-ce", "--steps", "2", "--n", "20",
                            "--eps", "0,8/255", "--data-dir", str(data_dir), "--no-download", "--device", "cpu",
                            "--out", str(out))
    one_line_error(code, err)
    assert "in use" in err and not (out / "curve.json").exists()
    code, _, err = main("curve", "--model", str(tiny), "--attack", "pgd-ce", "--steps", "2", "--n", "20",
                        "--eps", "0,8/255", "--data-dir", str(data_dir), "--no-download", "--device", "cpu",
                        "--out", str(out))
    assert code == 0, err
    assert (out / "curve.json").is_file() and not (out / ".lock").exists()


@pytest.mark.parametrize("flag, value", [("--epochs", "3"), ("--seed", "5"), ("--seed", "0"), ("--preset", "smoke"),
                                         ("--out", "elsewhere")])
def test_resume_refuses_settings_it_would_ignore(tiny: Path, data_dir: Path, tmp_path: Path, flag: str,
                                                 value: str) -> None:
    run = resumable(tiny, tmp_path / "run")
    code, _, err = main("train", "--resume", str(run), flag, value, "--data-dir", str(data_dir), "--device", "cpu")
    one_line_error(code, err)
    assert flag in err and not (run / "model.safetensors").exists()


def test_results_stamp_the_commit_the_process_started_from(monkeypatch: pytest.MonkeyPatch) -> None:
    """A commit made while a long run works must not be stamped on its results: the commit is read once, at start."""
    from robust_uatt.utils import runtime

    heads = iter(["a" * 40, "b" * 40])

    def git_rev_parse(*args, **kwargs):  # each call: the checkout's HEAD, which moves after the first
        return subprocess.CompletedProcess(args, 0, stdout=next(heads) + "\n", stderr="")

    runtime._git_commit.cache_clear()
    monkeypatch.setattr(runtime.subprocess, "run", git_rev_parse)
    try:
        runtime.pin_code_version()  # the run starts
        assert runtime.versions()["git_commit"] == "a" * 40  # written after HEAD moved to b...
        assert runtime.versions()["git_commit"] == "a" * 40
    finally:
        runtime._git_commit.cache_clear()
