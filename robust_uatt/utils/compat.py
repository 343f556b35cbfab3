"""The one place that bridges third-party packaging quirks.

robustbench 1.1.1 (the optional extra) does ``from autoattack import AutoAttack`` and
``from autoattack.state import EvaluationState``, but its PyPI dependency ``pyautoattack`` installs the module as
``pyautoattack``. ``import_robustbench`` registers ``pyautoattack`` (and its submodules) under the name
``autoattack`` before importing robustbench, unless a real ``autoattack`` (e.g. the GitHub package) is installed.
Everything that needs robustbench or AutoAttack imports it through here, lazily, so the core never depends on it.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import sys
import warnings
from types import ModuleType
from typing import Any

from robust_uatt.utils.errors import UserError

_INSTALL_HINT = "install the optional extra: pip install 'robust-uatt[robustbench]'"


def import_autoattack() -> ModuleType:
    """The AutoAttack package, under whichever name it is installed."""
    try:
        return importlib.import_module("autoattack")
    except ModuleNotFoundError:
        pass
    try:
        package = importlib.import_module("pyautoattack")
    except ModuleNotFoundError:
        raise UserError(f"AutoAttack is not installed ({_INSTALL_HINT})") from None
    sys.modules["autoattack"] = package
    for info in pkgutil.iter_modules(package.__path__):
        if info.name.startswith(("utils_tf", "fab_tf")):  # TensorFlow variants: importing them needs tensorflow
            continue
        sys.modules[f"autoattack.{info.name}"] = importlib.import_module(f"pyautoattack.{info.name}")
    return package


def autoattack_version() -> str:
    """'pyautoattack 0.2.0' (or 'autoattack <version>'): the reference implementation that runs."""
    package = import_autoattack()
    name = "pyautoattack" if "pyautoattack" in package.__name__ else "autoattack"
    return f"{name} {getattr(package, '__version__', '?')}"


def run_reference_autoattack(model: Any, x: Any, y: Any, *, eps: float, seed: int, iterations: int = 100,
                             square_queries: int = 5000) -> Any:
    """AutoAttack 'standard' (APGD-CE, APGD-T, FAB-T, Square) on one batch with the reference implementation;
    returns x_adv. Bridges the two APIs: PyPI's ``pyautoattack`` 0.2 (keyword-only, ``batch_size=``, returns
    ``(x_adv, y_adv)``, device default 'cpu') and fra31's GitHub ``autoattack`` (``bs=``, returns x_adv, device
    default CUDA, ``verbose=``). The device is always the one x lives on. ``iterations`` / ``square_queries`` set the
    budgets (100 / 5000 are the reference's standard version)."""
    package = import_autoattack()
    params = inspect.signature(package.AutoAttack.__init__).parameters
    kwargs = {"norm": "Linf", "eps": eps, "version": "standard", "seed": seed, "device": x.device}
    if "verbose" in params:
        kwargs["verbose"] = False
    aa = package.AutoAttack(model, **kwargs)
    aa.verbose = False
    for apgd in (aa.apgd, aa.apgd_targeted):  # the schedule APGD derives from n_iter in its constructor
        apgd.n_iter = apgd.n_iter_orig = iterations
        apgd.n_iter_2, apgd.n_iter_min = max(int(0.22 * iterations), 1), max(int(0.06 * iterations), 1)
        apgd.size_decr = max(int(0.03 * iterations), 1)
    aa.fab.n_iter = iterations
    aa.square.n_queries = square_queries
    run_params = inspect.signature(aa.run_standard_evaluation).parameters
    if "batch_size" in run_params:
        out = aa.run_standard_evaluation(x, y, batch_size=len(x))
    else:
        out = aa.run_standard_evaluation(x, y, bs=len(x))
    return out[0] if isinstance(out, tuple) else out


def import_robustbench() -> ModuleType:
    """robustbench, with the ``autoattack`` name bridged first."""
    import_autoattack()
    try:
        with warnings.catch_warnings():  # its imports warn (pkg_resources, torch.jit.interface): not ours to print,
            warnings.simplefilter("ignore", FutureWarning)  # and they would break the one-line error promise
            warnings.simplefilter("ignore", UserWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            return importlib.import_module("robustbench")
    except ModuleNotFoundError:
        raise UserError(f"robustbench is not installed ({_INSTALL_HINT})") from None
