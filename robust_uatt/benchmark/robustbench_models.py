"""RobustBench models from a LOCAL model directory, offline: never a download, any failure one UserError line.

``robustbench.utils.load_model`` downloads missing weights from Google Drive (gdown) and then ``torch.load``s
them. Offline that hangs or fails with a long traceback, so the expected files are checked first (before robustbench
is even imported, so the check works without the optional extra) and the downloader is replaced by a refusal while
loading. Layout, as RobustBench itself writes it::

    MODEL_DIR/<dataset>/<threat_model>/<name>.pt          (single models)
    MODEL_DIR/<dataset>/<threat_model>/<name>.pt_m<i>.pt  (ensembles, i = 0, 1, ...)

robustbench 1.1.1 calls ``torch.load(path, map_location='cpu')`` without ``weights_only``, which
``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` turns into ``weights_only=False`` (a pickle then runs code): so the call runs
inside ``weights_only_torch_load``, which passes ``weights_only=True`` explicitly (torch lets no environment
variable override an explicit value): a plain state dict (or ``{'state_dict': ...}``) of tensors loads, a
checkpoint that pickles other objects is refused (reported here as a UserError), and no pickled code ever runs.
RobustBench models take images in [0, 1] (any normalization is a layer inside the model) and return logits.
"""

from __future__ import annotations

import contextlib
import pickle
import re
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

from torch import nn

from robust_uatt.utils.compat import import_robustbench
from robust_uatt.utils.errors import UserError, unknown_name
from robust_uatt.utils.files import weights_only_torch_load


def expected_weights(name: str, model_dir: str | Path, dataset: str = "cifar10", threat_model: str = "Linf") -> Path:
    """Where robustbench looks for a single model's weights (ensembles add ``_m<i>.pt`` to this path)."""
    return Path(model_dir) / dataset / threat_model / f"{name}.pt"


def _ensemble_file(path: Path, i: int) -> Path:
    return Path(f"{path}_m{i}.pt")


def _check_local_file(path: Path, name: str) -> None:
    """Refuse before robustbench would fall back to downloading (and before robustbench is imported at all)."""
    if path.is_file() or _ensemble_file(path, 0).is_file():
        return
    raise UserError(f"RobustBench weights for {name} not found: put them at {path} "
                    f"(robust-uatt never downloads; fetch them on a connected machine with robustbench's load_model)")


def _zoo_entry(rb_utils: ModuleType, name: str, dataset: str, threat_model: str) -> dict[str, Any]:
    """The model-zoo entry, or a UserError naming what is known; unknown names would otherwise be a KeyError."""
    zoo = rb_utils.all_models
    datasets = {d.value: d for d in zoo}
    if dataset not in datasets:
        raise unknown_name("RobustBench dataset", dataset, datasets)
    models_by_tm = zoo[datasets[dataset]]
    threat_models = {t.value: t for t in models_by_tm}
    if threat_model not in threat_models:
        raise unknown_name(f"RobustBench threat model for {dataset}", threat_model, threat_models)
    models = models_by_tm[threat_models[threat_model]]
    if name not in models:
        raise unknown_name(f"RobustBench {dataset}/{threat_model} model", name, models)
    return models[name]


def _check_ensemble_files(entry: dict[str, Any], path: Path, name: str) -> None:
    """An ensemble needs one file per member; a missing member would be downloaded."""
    ids = entry.get("gdrive_id")
    if isinstance(ids, list):
        missing = [_ensemble_file(path, i) for i in range(len(ids)) if not _ensemble_file(path, i).is_file()]
        if missing:
            raise UserError(f"RobustBench ensemble {name} needs {len(ids)} weight files; missing {missing[0]}"
                            f"{f' and {len(missing) - 1} more' if len(missing) > 1 else ''}")
    elif not path.is_file():
        raise UserError(f"RobustBench weights for {name} not found: put them at {path}")


def _refuse_timm(rb_utils: ModuleType, name: str, dataset: str, threat_model: str) -> None:
    """Names that timm registers are loaded by timm from the Hugging Face hub, ignoring model_dir: a download."""
    timm = getattr(rb_utils, "timm", None)  # robustbench builds without timm support never load through it
    timm_name = f"{name.lower().replace('-', '_')}_{dataset.lower()}_{threat_model.lower()}"
    if timm is not None and timm.is_model(timm_name):
        raise UserError(f"RobustBench loads {name} through timm ({timm_name}), which downloads it: "
                        f"not supported offline")


@contextlib.contextmanager
def _no_downloads(rb_utils: ModuleType) -> Iterator[None]:
    """Belt and braces: while loading, robustbench's downloader refuses instead of reaching the network."""

    def refuse(gdrive_id: Any, fname_save: Any) -> None:
        raise UserError(f"RobustBench wanted to download {fname_save}; put the file there instead (offline)")

    # robustbench 1.1.1 downloads with download_gdrive_new, older releases with download_gdrive: refuse both
    originals = {n: getattr(rb_utils, n) for n in ("download_gdrive_new", "download_gdrive") if hasattr(rb_utils, n)}
    for n in originals:
        setattr(rb_utils, n, refuse)
    try:
        yield
    finally:
        for n, fn in originals.items():
            setattr(rb_utils, n, fn)


def _unpickling_reason(e: BaseException) -> str:
    """torch's refusal is a paragraph of advice; the reason is the part after 'WeightsUnpickler error:'."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e))
    match = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\. |\n\n|$)", text, re.DOTALL)
    return " ".join(match.group(1).split()) if match else _one_line(e)


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{e.__class__.__name__}: {text[0] if text else ''}"


def load_robustbench_model(name: str, model_dir: str | Path, dataset: str = "cifar10",
                           threat_model: str = "Linf") -> nn.Module:
    """A RobustBench zoo model with local weights, in eval mode: [0,1] NCHW images -> logits."""
    path = expected_weights(name, model_dir, dataset, threat_model)
    _check_local_file(path, name)
    rb_utils = import_robustbench().utils
    entry = _zoo_entry(rb_utils, name, dataset, threat_model)
    _refuse_timm(rb_utils, name, dataset, threat_model)
    _check_ensemble_files(entry, path, name)
    try:
        with _no_downloads(rb_utils), weights_only_torch_load():
            model = rb_utils.load_model(model_name=name, model_dir=str(model_dir), dataset=dataset,
                                        threat_model=threat_model)
    except UserError:
        raise
    except pickle.UnpicklingError as e:
        raise UserError(f"{path}: torch.load (weights_only=True) refused it: {_unpickling_reason(e)} (a checkpoint "
                        f"must hold only tensors; this one is corrupt or pickles other objects)") from None
    except Exception as e:  # corrupt zip, wrong architecture, ...: robustbench raises many kinds
        raise UserError(f"{path}: RobustBench could not load {name} ({_one_line(e)})") from None
    return model.eval()
