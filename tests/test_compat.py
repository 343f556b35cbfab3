"""The autoattack/pyautoattack bridge, tested with stand-in packages (the real ones are an optional extra)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from robust_uatt.utils import compat
from robust_uatt.utils.errors import UserError


def test_pyautoattack_is_registered_as_autoattack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = tmp_path / "pyautoattack"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from .autoattack import AutoAttack\n")
    (pkg / "autoattack.py").write_text("class AutoAttack: pass\n")
    (pkg / "state.py").write_text("class EvaluationState: pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in [m for m in sys.modules if m.split(".")[0] in ("autoattack", "pyautoattack")]:
        monkeypatch.delitem(sys.modules, name)
    try:
        import autoattack  # noqa: F401
        pytest.skip("a real autoattack package is installed")
    except ModuleNotFoundError:
        pass
    module = compat.import_autoattack()
    from autoattack import AutoAttack
    from autoattack.state import EvaluationState

    assert module.__name__ == "pyautoattack" and AutoAttack.__module__ == "pyautoattack.autoattack"
    assert EvaluationState.__module__ == "pyautoattack.state"
    for name in [m for m in sys.modules if m.split(".")[0] in ("autoattack", "pyautoattack")]:
        monkeypatch.delitem(sys.modules, name)


def test_missing_extra_is_a_user_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    real = importlib.import_module

    def fake(name: str, *args, **kwargs):
        if name.split(".")[0] in ("autoattack", "pyautoattack", "robustbench"):
            raise ModuleNotFoundError(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(compat.importlib, "import_module", fake)
    with pytest.raises(UserError, match=r"robust-uatt\[robustbench\]"):
        compat.import_robustbench()
