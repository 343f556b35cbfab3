"""Model selection on the validation split ([train] select = "best-val", patience): keep, stop, restore, resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

import robust_uatt.training.loop as train_mod
from robust_uatt.models.zoo import load_recipe
from robust_uatt.training.selection import BestValidation
from robust_uatt.utils.errors import UserError
from robust_uatt.utils.runtime import resolve_device

RECIPE = """
description = "tiny VGG on synthetic data, best validation epoch"
dataset = "cifar10"
[model]
arch = "vgg16"
width = 0.125
[data]
augment = "none"
[train]
epochs = 6
batch_size = 50
optimizer = "adam"
lr = 0.003
weight_decay = 0.0
schedule = "constant"
limit_train = 100
select = "{select}"
patience = {patience}
"""


def _recipe(tmp_path: Path, select: str = "best-val", patience: int = 2):
    path = tmp_path / "tiny.toml"
    path.write_text(RECIPE.format(select=select, patience=patience))
    return load_recipe(str(path))


def test_best_validation_epoch_is_the_model_and_patience_stops(tmp_path: Path, data_dir: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    scripted = iter([0.50, 0.70, 0.60, 0.65, 0.99, 0.99])  # best at epoch 2; 2 epochs without a new best: stop
    monkeypatch.setattr(train_mod, "accuracy", lambda *a, **k: next(scripted))
    run = tmp_path / "run"
    card = train_mod.train(_recipe(tmp_path), run, seed=0, device=resolve_device("cpu"), data_dir=str(data_dir),
                           download=False)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3, 4] and records[-1]["early_stop"] is True
    assert [r["val_best_epoch"] for r in records] == [1, 2, 2, 2]
    assert card["selection"] == {"select": "best-val", "split": "validation (hold-out of the training set)",
                                 "patience": 2, "best_epoch": 2, "best_val_acc": 0.70, "epochs_run": 4,
                                 "stopped_early_at": 4}
    final, best = load_file(str(run / "model.safetensors")), load_file(str(run / "best_val.safetensors"))
    assert final.keys() == best.keys() and all((final[k] == best[k]).all() for k in final)


def test_resumed_run_that_ran_out_of_patience_trains_no_further(tmp_path: Path) -> None:
    records = [{"epoch": 1, "val_acc": 0.5}, {"epoch": 2, "val_acc": 0.7}, {"epoch": 3, "val_acc": 0.6},
               {"epoch": 4, "val_acc": 0.6}]
    assert BestValidation(tmp_path, 2, records).out_of_patience()
    assert not BestValidation(tmp_path, 3, records).out_of_patience()
    assert not BestValidation(tmp_path, 0, records).out_of_patience()  # 0 = never stop early
    tie = BestValidation(tmp_path, 0, [*records, {"epoch": 5, "val_acc": 0.7}])
    assert tie.best_epoch == 2  # ties: the earlier epoch


def test_patience_without_best_val_selection_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="patience needs select"):
        _recipe(tmp_path, select="last", patience=3)
    with pytest.raises(UserError, match="select"):
        _recipe(tmp_path, select="best-test", patience=0)


def test_api_overrides_are_validated_like_a_recipe(tmp_path: Path) -> None:
    from robust_uatt import api

    with pytest.raises(UserError, match="patience needs select"):
        api.train("mnist-ram", preset="smoke", out=tmp_path / "r", select="last", patience=2)
    with pytest.raises(UserError, match="patience"):
        api.train("mnist-ram", preset="smoke", out=tmp_path / "r", select="best-val", patience=-1)
    assert not (tmp_path / "r").exists()
