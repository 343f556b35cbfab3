"""Mean and spread over training seeds: the table a fair model comparison needs (README "Results").

``robust-uatt seeds RESULT...`` (``api.seeds``) groups evaluation results (results.json) by model, preset, suite and
radius, and reports for each group the number of training seeds, the mean and the spread (sample standard
deviation, and min-max) of clean accuracy, the paper's protocol, the reference AutoAttack alone (where the suite runs
it first: ``standard``, ``defended``) and the worst case, each seed's value with its n and 95% Clopper-Pearson
interval beside it. Two results of one group must come from different training seeds on
the same test points (same n and data): anything else would average a model with itself or mix test sets, so it
is refused with one line. INVALID or unchecked results are never averaged into a valid row: the row says so.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from robust_uatt.evaluation.intervals import clopper_pearson
from robust_uatt.evaluation.results import EvaluationResult
from robust_uatt.utils.errors import UserError, printable

def autoattack_alone(result: EvaluationResult) -> float | None:
    """The reference AutoAttack's own robust accuracy when the suite runs it first (``standard``, ``defended``):
    its row saw every clean-correct point. None for a suite that does not start with AutoAttack."""
    rows = [row for row in result.attacks if isinstance(row, dict)]
    if not rows or rows[0].get("name") != "autoattack":
        return None
    value = rows[0].get("robust_accuracy_after")
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


METRICS: tuple[tuple[str, Callable[[EvaluationResult], float | None]], ...] = (
    ("clean", lambda r: r.clean_accuracy), ("paper_protocol", lambda r: r.paper_protocol_accuracy),
    ("autoattack", autoattack_alone), ("worst_case", lambda r: r.robust_accuracy))


@dataclass
class SeedGroup:
    """The results of one (model, preset, suite, eps) over training seeds."""

    model: str
    preset: str | None
    suite: str
    eps_text: str
    results: list[EvaluationResult] = field(default_factory=list)

    @property
    def seeds(self) -> list[int | None]:
        return [train_seed(r) for r in self.results]

    @property
    def status(self) -> str:
        statuses = {r.status for r in self.results}
        return "valid" if statuses == {"valid"} else "/".join(sorted(statuses))

    def metric(self, get: Callable[[EvaluationResult], float | None]) -> dict[str, Any] | None:
        """Mean, spread and the per-seed values (with n and interval) of one accuracy; None unless every result
        has it."""
        values = [get(r) for r in self.results]
        if any(v is None for v in values):
            return None
        per_seed = []
        for r, v in zip(self.results, values):
            n = r.n or 0
            per_seed.append({"seed": train_seed(r), "accuracy": v, "n": n,
                             "ci95": list(clopper_pearson(round(v * n), n)) if n else None})
        return {"mean": statistics.fmean(values),
                "std": statistics.stdev(values) if len(values) > 1 else None,
                "min": min(values), "max": max(values), "seeds": per_seed}

    def to_json(self) -> dict[str, Any]:
        row: dict[str, Any] = {"model": self.model, "preset": self.preset, "suite": self.suite,
                               "eps": self.eps_text, "n": self.results[0].n, "training_seeds": self.seeds,
                               "status": self.status}
        for key, get in METRICS:
            row[key] = self.metric(get)
        row["results"] = [str(r.path) if r.path else None for r in self.results]
        return row


def train_seed(result: EvaluationResult) -> int | None:
    seed = result.model.get("train_seed")
    return seed if isinstance(seed, int) and not isinstance(seed, bool) else None


def _key(r: EvaluationResult) -> tuple[str, str | None, str, str]:
    eps_text = r.threat_model.get("eps_text")
    eps = eps_text if isinstance(eps_text, str) else ("-" if r.eps is None else f"{r.eps:g}")
    preset = r.model.get("preset")
    return r.name, preset if isinstance(preset, str) else None, r.suite_name, eps


def group_by_seed(results: Sequence[EvaluationResult]) -> list[SeedGroup]:
    """Groups in first-seen order; refuses a group that repeats a training seed or mixes test sets."""
    groups: dict[tuple, SeedGroup] = {}
    for r in results:
        key = _key(r)
        group = groups.setdefault(key, SeedGroup(*key))
        group.results.append(r)
    for g in groups.values():
        seeds = g.seeds
        label = f"{g.model} ({g.suite}, eps {g.eps_text})"
        if len(g.results) > 1 and None in seeds:
            raise UserError(f"{escape_text(label)}: a result does not record its model's training seed (evaluate "
                            "weights written by robust-uatt)")
        if len(set(seeds)) != len(seeds):
            raise UserError(f"{escape_text(label)}: training seed {_repeated(seeds)} appears twice; one result per "
                            "seed")
        points = {(r.n, r.data.get("first_n"), r.data.get("dataset")) for r in g.results}
        if len(points) > 1:
            raise UserError(f"{escape_text(label)}: the results were measured on different test points "
                            f"({sorted(map(str, points))}); evaluate every seed on the same n")
    return list(groups.values())


def _repeated(seeds: list) -> Any:
    return next(s for s in seeds if seeds.count(s) > 1)


def escape_text(value: Any) -> str:
    """A name read from a file, for one Markdown cell or one error line: control characters escaped, '|' literal."""
    return printable(value).replace("|", "\\|")


def _fmt(metric: dict[str, Any] | None) -> str:
    if metric is None:
        return "-"
    text = f"{100 * metric['mean']:.2f}"
    if metric["std"] is not None:
        text += f" ± {100 * metric['std']:.2f}"
    return text


def _per_seed(metric: dict[str, Any] | None) -> str:
    if metric is None:
        return "-"
    parts = []
    for s in metric["seeds"]:
        ci = s["ci95"]
        parts.append(f"s{s['seed']}: {100 * s['accuracy']:.1f}" + (f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"
                                                                   if ci else ""))
    return "; ".join(parts)


def seeds_markdown(groups: Sequence[SeedGroup]) -> str:
    """Mean ± sample std over seeds (percent), then each seed with its 95% interval on n points."""
    rows = [g.to_json() for g in groups]  # each group's metrics and intervals, computed once
    aa = any(row["autoattack"] for row in rows)  # the AutoAttack column only where a suite ran it first
    lines = ["| model | preset | suite | eps | n | seeds | clean | paper protocol | " + ("AutoAttack | " if aa else "")
             + "worst case | status |", "|---|---|---|---|---:|---:|---|---|" + ("---|" if aa else "") + "---|---|"]
    for g, row in zip(groups, rows):
        lines.append(f"| {escape_text(g.model)} | {escape_text(g.preset or '-')} | {escape_text(g.suite)} | "
                     f"{escape_text(g.eps_text)} | {row['n']} | {len(g.results)} | {_fmt(row['clean'])} | "
                     f"{_fmt(row['paper_protocol'])} | " + (f"{_fmt(row['autoattack'])} | " if aa else "")
                     + f"{_fmt(row['worst_case'])} | {g.status} |")
    lines += ["", "Per seed (accuracy % [95% Clopper-Pearson interval on n points]):", ""]
    for g, row in zip(groups, rows):
        lines.append(f"- {escape_text(g.model)}, {escape_text(g.suite)}, eps {escape_text(g.eps_text)}: clean "
                     f"{_per_seed(row['clean'])}; paper {_per_seed(row['paper_protocol'])}; "
                     + (f"AutoAttack {_per_seed(row['autoattack'])}; " if row["autoattack"] else "")
                     + f"worst case {_per_seed(row['worst_case'])}")
    return "\n".join(lines) + "\n"


def spread_note(groups: Sequence[SeedGroup]) -> str:
    single = [g for g in groups if len(g.results) < 2]
    if not single:
        return ""
    return (f"{len(single)} of {len(groups)} rows rest on one training seed: no spread, and no comparison may be "
            "read from them alone")


__all__ = ["SeedGroup", "autoattack_alone", "group_by_seed", "seeds_markdown", "spread_note", "train_seed"]
