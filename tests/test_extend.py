"""Extending a run that early stopping ended (``train --extend``): the same run a larger patience gives from scratch,
at the cost of the new epochs only; every refusal is one line and writes nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

import robust_uatt.training.loop as train_mod
from robust_uatt import api
from robust_uatt.models.zoo import load_recipe
from robust_uatt.training.extend import check_extension, recipe_differences
from robust_uatt.utils.errors import UserError
from robust_uatt.utils.runtime import resolve_device

RECIPE = """
description = "tiny VGG on synthetic data, early stopping"
dataset = "cifar10"
[model]
arch = "vgg16"
width = 0.125
[data]
augment = "crop-flip"
[train]
epochs = 10
batch_size = 50
optimizer = "adam"
lr = 0.003
weight_decay = 0.0
schedule = "constant"
limit_train = 100
select = "best-val"
patience = {patience}
"""
# validation accuracy per epoch (scripted: the tiny model's own would not exercise early stopping reliably).
# patience 2 stops after epoch 4 (best: epoch 2); patience 3 finds a new best at epoch 5 and stops after epoch 8.
SCRIPT = [0.50, 0.70, 0.60, 0.65, 0.80, 0.75, 0.72, 0.71, 0.70, 0.69, 0.68, 0.67]


def _recipe(tmp_path: Path, patience: int):
    path = tmp_path / f"tiny-p{patience}.toml"
    path.write_text(RECIPE.format(patience=patience))
    return load_recipe(str(path))


def _script(monkeypatch: pytest.MonkeyPatch, start_epoch: int) -> None:
    scripted = iter(SCRIPT[start_epoch:])
    monkeypatch.setattr(train_mod, "accuracy", lambda *a, **k: next(scripted))


def _records(run: Path) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if "seconds" not in k and not k.endswith("per_s")}
            for line in lines]


def _train(tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch, patience: int, name: str) -> Path:
    _script(monkeypatch, 0)
    run = tmp_path / name
    train_mod.train(_recipe(tmp_path, patience), run, seed=0, device=resolve_device("cpu"), data_dir=str(data_dir),
                    download=False)
    return run


def test_extension_equals_the_longer_patience_from_scratch(tmp_path: Path, data_dir: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    short = _train(tmp_path, data_dir, monkeypatch, 2, "short")
    assert [r["epoch"] for r in _records(short)] == [1, 2, 3, 4] and _records(short)[-1]["early_stop"] is True
    before = {p.name: p.read_bytes() for p in short.iterdir() if p.is_file()}
    scratch = _train(tmp_path, data_dir, monkeypatch, 3, "scratch")
    assert [r["epoch"] for r in _records(scratch)] == list(range(1, 9))

    _script(monkeypatch, 4)  # the extension trains epochs 5.. only: the validation calls start there
    extended = api.train(extend=short, out=tmp_path / "extended", patience=3, device="cpu", data_dir=str(data_dir),
                         download=False)
    assert _records(extended) == _records(scratch)  # every epoch's record, bit for bit (timings aside)
    a, b = load_file(str(extended / "model.safetensors")), load_file(str(scratch / "model.safetensors"))
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    card, reference = (json.loads((r / "model_card.json").read_text()) for r in (extended, scratch))
    assert card["selection"] == reference["selection"]
    assert card["selection"]["best_epoch"] == 5 and card["selection"]["stopped_early_at"] == 8
    assert card["recipe"]["train"]["patience"] == 3
    origin = card["extended_from"]
    assert origin["run"] == str(short) and origin["patience"] == 2 and origin["epochs_run"] == 4
    assert origin["best_epoch"] == 2 and origin["extended_with"]["patience"] == 3
    assert {p.name: p.read_bytes() for p in short.iterdir() if p.is_file()} == before  # the source is untouched


def test_refusals_write_nothing(tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    short = _train(tmp_path, data_dir, monkeypatch, 2, "short")
    out = tmp_path / "out"

    def refused(match: str, **kwargs) -> None:
        with pytest.raises(UserError, match=match):
            api.train(**{"extend": short, "out": out, "device": "cpu", "data_dir": str(data_dir),
                         "download": False, **kwargs})
        assert not out.exists() and not list(tmp_path.glob(".out.extending-*"))

    refused("would have stopped .* where it stopped", patience=2)
    refused("could have stopped .* earlier", patience=1)
    refused("may change only .*train.lr", patience=3, lr=0.01)
    refused("fewer than", patience=3, epochs=5)
    refused("own seed", patience=3, seed=1)
    refused("not mnist-ram", name="mnist-ram", patience=3)
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    for f in ("config.json", "metrics.jsonl", "checkpoint.safetensors"):
        (unfinished / f).write_bytes((short / f).read_bytes())
    with pytest.raises(UserError, match="not a finished run"):
        api.train(extend=unfinished, out=out, patience=3, device="cpu", data_dir=str(data_dir), download=False)
    assert not out.exists()
    out.mkdir()
    (out / "something").write_text("x")
    with pytest.raises(UserError, match="not empty"):
        api.train(extend=short, out=out, patience=3, device="cpu", data_dir=str(data_dir), download=False)
    assert [p.name for p in out.iterdir()] == ["something"]


def test_a_run_that_used_all_its_epochs_extends_only_by_epochs(tmp_path: Path, data_dir: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    full = _train(tmp_path, data_dir, monkeypatch, 9, "full")  # patience 9 never runs out within 10 epochs
    assert len(_records(full)) == 10
    with pytest.raises(UserError, match="did not stop early"):
        api.train(extend=full, out=tmp_path / "out", patience=0, device="cpu", data_dir=str(data_dir),
                  download=False)
    assert not (tmp_path / "out").exists()
    # under the constant schedule, 12 epochs from scratch are these 10 and two more
    _script(monkeypatch, 0)
    scratch = tmp_path / "scratch"
    recipe = _recipe(tmp_path, 9)
    recipe.train["epochs"] = 12
    train_mod.train(recipe, scratch, seed=0, device=resolve_device("cpu"), data_dir=str(data_dir), download=False)
    _script(monkeypatch, 10)
    longer = api.train(extend=full, out=tmp_path / "longer", epochs=12, device="cpu", data_dir=str(data_dir),
                       download=False)
    assert _records(longer) == _records(scratch) and len(_records(longer)) == 12
    a, b = load_file(str(longer / "model.safetensors")), load_file(str(scratch / "model.safetensors"))
    assert all((a[k] == b[k]).all() for k in a)


def test_epochs_stay_under_a_schedule_that_depends_on_them() -> None:
    base = load_recipe("mnist-ram", "cpu")  # cosine
    longer = load_recipe("mnist-ram", "cpu")
    longer.train["epochs"] = 60
    with pytest.raises(UserError, match="cosine schedule"):
        check_extension(Path("r"), base, longer, [{"epoch": 1, "val_acc": 0.5, "early_stop": True}])


def test_table1_patience30_presets_change_only_patience() -> None:
    for name in ("mnist-fc", "mnist-cnn", "mnist-ram", "mnist-ram7", "mnist-uatt", "mnist-uatt-entropy"):
        base, longer = load_recipe(name), load_recipe(name, "patience30")
        assert recipe_differences(base.to_dict(), longer.to_dict()) == []
        assert (base.train["patience"], longer.train["patience"]) == (10, 30)
        assert (base.train["epochs"], longer.train["epochs"]) == (100, 200) and base.train["schedule"] == "constant"
        check_extension(Path(name), base, longer, [{"epoch": 1, "val_acc": 0.5, "early_stop": True}])
        with pytest.raises(UserError, match="adversarial guard"):
            check_extension(Path(name), base, longer, [{"epoch": 1, "val_acc": 0.5, "guard": "collapse"}])
    cpu = load_recipe("mnist-ram", "cpu")
    assert recipe_differences(load_recipe("mnist-ram").to_dict(), cpu.to_dict()) == ["train.lr", "train.schedule"]


def test_cli_extend_refusal_is_one_line(run_cli, tmp_path: Path) -> None:
    r = run_cli("train", "--extend", str(tmp_path / "nope"), "--patience", "30", "--out", str(tmp_path / "x"))
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "no such run directory" in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "x").exists()


def test_an_extension_carries_the_name_of_the_recipe_it_became() -> None:
    from robust_uatt.api import _preset_of

    capped = load_recipe("cluttered-mnist-fc", "cap20")
    assert capped.train["epochs"] == 20 and capped.train["schedule"] == "constant"
    capped.train["epochs"] = 100  # --extend RUN --epochs 100: the full recipe
    assert _preset_of(capped, "cap20") is None
    longer = load_recipe("mnist-fc")
    longer.train.update(patience=30, epochs=200)
    assert _preset_of(longer, None) == "patience30"
    longer.train["epochs"] = 150  # matches no preset: keeps the name it had
    assert _preset_of(longer, None) is None and _preset_of(longer, "x") == "x"
    for name in ("cluttered-mnist-cnn", "cluttered-mnist-uatt", "cluttered-mnist-ram1-8"):
        base, capped = load_recipe(name), load_recipe(name, "cap20")
        assert recipe_differences(base.to_dict(), capped.to_dict()) == [] and capped.train["epochs"] == 20
