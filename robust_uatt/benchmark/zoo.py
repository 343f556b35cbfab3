"""Benchmark the model zoo in one call (README command (1)): every CIFAR-10 zoo model that has weights (a local run
or the weights shipped in ``zoo/weights/``), at each radius, through the ``zoo`` suite (the paper's protocol beside a
quick worst case), then beside the RobustBench rows of the same threat model.

The quick worst case is an upper bound on robust accuracy, not a verdict of the strength of ``standard`` or
``adaptive``; the table says so. ``api.benchmark`` runs it; this module holds the result and its table. Each
evaluation is an ordinary ``EvaluationResult`` (results.json) under ``out/<model>/eps-<eps>/``, so ``compare`` and
the report read them like any other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.table import Table

from robust_uatt.evaluation.results import EvaluationResult
from robust_uatt.models.zoo import find_weights, load_recipe, recipe_names
from robust_uatt.training.export import accuracy_entry
from robust_uatt.utils.errors import UserError

DEFAULT_EPS = ("8/255", "1/255")
SUITE = "zoo"


@dataclass
class ZooBenchmark:
    """The evaluations of a zoo benchmark, one per (model, eps), and the comparison with RobustBench."""

    results: list[EvaluationResult] = field(default_factory=list)
    origins: dict[str, str] = field(default_factory=dict)  # model name -> 'shipped' | 'local run' | 'file'
    comparison: Any = None  # benchmark.compare.Report at the radii RobustBench has
    out: Path | None = None

    def rows(self) -> list[dict[str, Any]]:
        rows = []
        for r in self.results:
            n = r.n or 0
            clean = accuracy_entry(round((r.clean_accuracy or 0) * n), n)
            robust = accuracy_entry(round((r.robust_accuracy or 0) * n), n)
            paper = None if r.paper_protocol_accuracy is None else \
                accuracy_entry(round(r.paper_protocol_accuracy * n), n)
            rows.append({"model": r.name, "weights": self.origins.get(r.name, "?"),
                         "eps": r.threat_model.get("eps_text", r.eps), "n": n, "clean": clean,
                         "paper_protocol": paper, "worst_case": robust, "valid": r.valid,
                         "seconds": r.seconds})
        return rows


def zoo_models(dataset: str = "cifar10", runs_dir: str | Path = "runs") -> list[str]:
    """Zoo names of ``dataset`` that have weights here (a finished local run, or shipped)."""
    names = []
    for name in recipe_names():
        if load_recipe(name).dataset != dataset:
            continue
        try:
            find_weights(name, runs_dir)
        except UserError:
            continue
        names.append(name)
    return names


def result_dir(out: Path, model: str, eps: str) -> Path:
    """Where the evaluation of ``model`` at ``eps`` is written: ``out/<model>/eps-<eps>``."""
    return out / model.replace("/", "_") / ("eps-" + eps.replace("/", "_"))


def _pct(entry: dict[str, Any] | None) -> str:
    if entry is None:
        return "-"
    return f"{100 * entry['accuracy']:.1f}% [{100 * entry['ci95'][0]:.1f}, {100 * entry['ci95'][1]:.1f}]"


def benchmark_table(bench: ZooBenchmark) -> Table:
    table = Table(title="zoo benchmark: clean, the paper's protocol (PGD-30 on Eq. 14) and a quick worst case "
                        "(FGSM, PGD-CE-10: an upper bound, not a verdict); 95% Clopper-Pearson intervals")
    for column in ("model", "weights", "eps", "n", "clean", "paper protocol", "quick worst case", "checks", "s"):
        table.add_column(column, justify="right" if column in ("n", "s") else "left")
    for row in bench.rows():
        table.add_row(row["model"], row["weights"], str(row["eps"]), str(row["n"]), _pct(row["clean"]),
                      _pct(row["paper_protocol"]), _pct(row["worst_case"]),
                      "pass" if row["valid"] else "INVALID", f"{row['seconds']:.0f}")
    return table
