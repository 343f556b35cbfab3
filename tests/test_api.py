"""The public API end to end (no argparse anywhere), the CLI's listing commands, option parsing on Python 3.10
semantics, and the package's import graph (no cycles)."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import torch

import robust_uatt as ru
from robust_uatt import cli
from robust_uatt.evaluation.selftest import train_healthy
from robust_uatt.utils import toml
from robust_uatt.utils.errors import UserError
from tests.conftest import REPO


@pytest.fixture(scope="module")
def healthy():
    """A small CNN fitted to synthetic squares (the selftest's healthy model) and 100 held-out points."""
    return train_healthy(seed=0)


def test_a_whole_evaluation_through_the_public_api(healthy, tmp_path: Path) -> None:
    model, data = healthy
    result = ru.evaluate(model, data.x, data.y, eps="8/255", attacks=["pgd-ce", "noise"], steps=5, checks="fast",
                         batch_size=50, device="cpu", seed=0, state_dir=tmp_path / "state")
    assert isinstance(result, ru.EvaluationResult)
    assert result.n == len(data) == 100 and result.suite_name == "pgd-ce,noise"
    assert result.clean_accuracy > 0.9 and 0.0 <= result.robust_accuracy <= result.clean_accuracy
    assert [row["name"] for row in result.attacks] == ["pgd-ce", "noise"]
    assert result.forward_passes > 0 and result.backward_passes > 0  # counted by forward hooks on the model itself
    assert result.valid and result.checks and all(c["passed"] is not False for c in result.checks if c["gating"])
    # where the time went: the parts add up, the checks' own passes are counted apart from the attacks'
    timing = result.timing
    assert timing["attack_seconds"] == pytest.approx(result.seconds) and result.seconds > 0
    assert timing["total_seconds"] == pytest.approx(timing["suite_seconds"] + timing["checks_seconds"])
    assert timing["suite_seconds"] == pytest.approx(timing["clean_and_setup_seconds"] + timing["attack_seconds"])
    assert timing["checks_forward_passes"] > 0 and timing["checks_backward_passes"] > 0
    assert 0 < sum(c["seconds"] for c in result.checks) <= timing["checks_seconds"]
    flags = result.per_example
    assert len(flags["clean_correct"]) == len(flags["robust_correct"]) == len(flags["broken_by"]) == 100
    assert sum(flags["robust_correct"]) == round(result.robust_accuracy * 100)
    assert (tmp_path / "state" / "state.json").is_file()
    # the JSON form round-trips, and what save() writes is what load() reads
    again = ru.EvaluationResult.from_json(json.loads(json.dumps(result.to_json())))
    assert again.to_json() == result.to_json() and not again.problems
    path = result.save(tmp_path / "out")
    loaded = ru.EvaluationResult.load(path.parent)
    assert loaded.robust_accuracy == result.robust_accuracy and loaded.eps == pytest.approx(8 / 255)
    report = (tmp_path / "out" / "results.md").read_text()
    assert report.startswith(f"# {loaded.name}: pgd-ce,noise") and "- time (this process): " in report


def test_the_same_evaluation_gives_the_same_result(healthy) -> None:
    model, data = healthy
    runs = [ru.evaluate(model, data.x[:40], data.y[:40], eps=0.03, attacks=["pgd-ce"], steps=3, checks="none",
                        device="cpu") for _ in range(2)]
    assert runs[0].per_example == runs[1].per_example


def test_make_attack_sets_eval_mode_and_frozen_parameters_itself_and_restores_them(healthy) -> None:
    model, data = healthy
    x = data.x[:16].float() / 255
    y = data.y[:16]
    seen = {}

    class Spy(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen["training"] = self.training
            seen["grad"] = any(p.requires_grad for p in self.parameters())
            return self.inner(x)

    spy = Spy(model).train().requires_grad_(True)
    attack = ru.make_attack("pgd-ce", eps=8 / 255, steps=3)
    adv = attack(spy, x, y)  # no index: positions 0..B-1
    assert seen == {"training": False, "grad": False}
    assert spy.training and all(p.requires_grad for p in spy.parameters())  # restored
    assert (adv - x).abs().max() <= 8 / 255 + 1e-6 and adv.min() >= 0 and adv.max() <= 1
    spy.eval()  # the fixture's model is shared
    with pytest.raises(UserError, match="restarts of attack pgd-ce must be int"):
        ru.make_attack("pgd-ce", eps=0.1, restarts="abc")
    with pytest.raises(UserError, match="grad_path of attack pgd-eq14: 'bogus'"):
        ru.make_attack("pgd-eq14", eps=0.1, grad_path="bogus")


def test_listings_match_what_the_cli_accepts(capsys: pytest.CaptureFixture) -> None:
    assert {"pgd", "pgd-eq14", "noise"} <= set(ru.list_attacks()) and "cifar10-vgg" in ru.list_models()
    assert {"paper", "quick", "standard", "adaptive"} <= set(ru.list_suites())
    assert cli.main(["attacks"]) == 0 and "pgd-eq14" in capsys.readouterr().out
    assert cli.main(["suites"]) == 0 and "adaptive" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"robust-uatt {ru.__version__}"
    help_text = cli.build_parser().format_help()
    assert help_text.split("\n\n")[1].startswith("robust-uatt: train the unified attention model")


@pytest.mark.parametrize("reader", ["stdlib", "tomli"])
def test_option_values_are_typed_on_python_310_semantics_too(reader: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if reader == "tomli":  # what Python 3.10 uses (tomllib is 3.11+)
        monkeypatch.setattr(toml, "tomllib", pytest.importorskip("tomli"))
    options = cli.parse_options(["early_stop=false", "restarts=3", "tau=0.1", "grad_path=full", 'name="x y"'])
    assert options == {"early_stop": False, "restarts": 3, "tau": 0.1, "grad_path": "full", "name": "x y"}
    assert options["early_stop"] is False
    with pytest.raises(UserError, match="key=value"):
        cli.parse_options(["early_stop"])


def test_a_bad_option_value_is_one_line_exit_2(healthy, data_dir: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    model, _ = healthy  # a 32x32 RGB, 10-class model standing in for a CIFAR-10 one
    origin = ru.api.ModelOrigin({"name": "healthy", "kind": "module"}, "cifar10")
    monkeypatch.setattr(ru.api, "load_model", lambda *a, **k: ru.api._remember(model, origin))
    args = ["attack", "--model", "any", "--attack", "pgd-ce", "--out", str(tmp_path / "o"), "--n", "8",
            "--data-dir", str(data_dir), "--no-download"]
    for option, message in (("restarts=abc", "restarts of attack pgd-ce must be int"),
                            ("early_stop=fals", "early_stop of attack pgd-ce must be bool")):
        assert cli.main([*args, "--option", option]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


def _imports(path: Path, package_root: Path) -> set[str]:
    """Every robust_uatt module ``path`` imports (at any level, TYPE_CHECKING included)."""
    modules = {".".join(p.relative_to(package_root.parent).with_suffix("").parts).removesuffix(".__init__")
               for p in package_root.rglob("*.py")}
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name in modules}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("robust_uatt"):
            subs = {f"{node.module}.{a.name}" for a in node.names} & modules
            out |= subs or ({node.module} & modules)
    return out


def test_the_package_has_no_import_cycle() -> None:
    root = REPO / "robust_uatt"
    graph = {".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__"): _imports(p, root)
             for p in root.rglob("*.py")}
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for dep in sorted(graph.get(module, ())):
            if state.get(dep) == 1:
                cycle = path[path.index(dep):] + [dep]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep, path + [dep])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert "robust_uatt.evaluation.harness" in graph and len(graph) > 30
