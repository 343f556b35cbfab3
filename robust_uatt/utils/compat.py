"""The one place that bridges third-party packaging quirks.

robustbench 1.1.1 (the optional extra) does ``from autoattack import AutoAttack`` and
``from autoattack.state import EvaluationState``, but its PyPI dependency ``pyautoattack`` installs the module as
``pyautoattack``. ``import_robustbench`` registers ``pyautoattack`` (and its submodules) under the name
``autoattack`` before importing robustbench, unless a real ``autoattack`` (e.g. the GitHub package) is installed.
Everything that needs robustbench or AutoAttack imports it through here, lazily, so the core never depends on it.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from types import ModuleType

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


def import_robustbench() -> ModuleType:
    """robustbench, with the ``autoattack`` name bridged first."""
    import_autoattack()
    try:
        return importlib.import_module("robustbench")
    except ModuleNotFoundError:
        raise UserError(f"robustbench is not installed ({_INSTALL_HINT})") from None
