"""``EvaluationResult``: what an evaluation found, in one class that ``attack`` writes (results.json) and
``compare``, ``curve`` and the report read.

JSON form (``to_json``; schema ``robust-uatt/results/1``, unchanged from earlier versions): model, suite, threat
model (norm, eps in pixel [0, 1] units, steps, alpha), clean and robust accuracy over the first ``n`` test images
(robust = worst case per example over every attack of the suite) with their 95% Clopper-Pearson intervals
(``*_ci``; evaluation/intervals.py), the passes per majority judgement (``judge_draws``), one row per attack
(attacked, broken, robust accuracy after it, seconds, forward/backward passes), the graph the attacks ran on
(``attack_graph``: BatchNorm folded or the original model, with the logit check), where this process's time went
(``timing``: clean pass and set-up, attacks, checks with their passes; each check has its seconds), the sanity
checks and the valid/INVALID verdict, per-example flags, provenance (data, seed, device, command, versions).
``from_json`` reads any results.json, older or partial ones included: a missing or mistyped field takes its default
and is listed in ``problems``; keys it does not know are kept in ``extra`` and written back unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from robust_uatt.utils.eps import parse_eps_text
from robust_uatt.utils.errors import UserError
from robust_uatt.utils.files import atomic_write_text, read_json, write_json

SCHEMA = "robust-uatt/results/1"
RESULTS_FILE = "results.json"
MARKDOWN_FILE = "results.md"
NUMBER = (int, float)
ESSENTIAL = ("threat_model", "robust_accuracy")  # without these a result cannot be compared or reported


def _typed(kind: type | tuple[type, ...], default: Any = None) -> Any:
    if isinstance(default, (dict, list)):
        return field(default_factory=type(default), metadata={"type": kind})
    return field(default=default, metadata={"type": kind})


@dataclass
class EvaluationResult:
    """One evaluation; accuracies are fractions in [0, 1]. Field order is the JSON key order."""

    schema: str = _typed(str, SCHEMA)
    model: dict[str, Any] = _typed(dict, {})  # name, weights, kind (robust-uatt, factory, robustbench, module), ...
    suite: dict[str, Any] | str = _typed((dict, str), {})  # name, description (a plain name in some old files)
    attack: str = _typed(str, "")  # the suite's name again (what older readers look for)
    threat_model: dict[str, Any] = _typed(dict, {})  # norm, bounded, eps, eps_text, eps_units, steps, alpha, ...
    policy: str = _typed(str, "mean")
    eot: int = _typed(int, 1)
    judge_draws: int = _typed(int, 1)  # passes per majority judgement (randomized models; evaluation/judging.py)
    cascade: bool = _typed(bool, True)
    autoattack_implementation: str | None = _typed(str)  # "reference" or "torchattacks port" when AutoAttack ran
    n: int | None = _typed(int)
    clean_accuracy: float | None = _typed(NUMBER)
    robust_accuracy: float | None = _typed(NUMBER)
    clean_accuracy_ci: list[float] | None = _typed(list)  # 95% Clopper-Pearson interval [lo, hi] over the n points
    robust_accuracy_ci: list[float] | None = _typed(list)
    confidence_interval: dict[str, Any] = _typed(dict, {})  # level, method, units of the *_ci fields
    attacks: list[dict[str, Any]] = _typed(list, [])  # one row per attack of the cascade
    seconds: float = _typed(NUMBER, 0.0)
    forward_passes: int = _typed(int, 0)
    backward_passes: int = _typed(int, 0)
    attack_graph: dict[str, Any] = _typed(dict, {})  # the graph attacks ran on: folded copy or original, and why
    timing: dict[str, Any] = _typed(dict, {})  # where this process's time went: clean + setup, attacks, checks
    paper_protocol_accuracy: float | None = _typed(NUMBER)  # only with a paper-protocol attack in the suite
    paper_protocol_accuracy_ci: list[float] | None = _typed(list)
    overestimation: float | None = _typed(NUMBER)  # paper protocol - worst case
    verdict: str = _typed(str, "")  # valid, INVALID or UNCHECKED (--checks none); "" in older files: see ``status``
    valid: bool = _typed(bool, True)  # False when INVALID or UNCHECKED
    invalid_reasons: list[str] = _typed(list, [])
    checks: list[dict[str, Any]] = _typed(list, [])
    checks_level: str = _typed(str, "fast")
    data: dict[str, Any] = _typed(dict, {})  # dataset, source, first_n, lossless_fraction
    seed: int = _typed(int, 0)
    device: str = _typed(str, "cpu")
    batch_size: int = _typed(int, 250)
    command: str = _typed(str, "")
    versions: dict[str, Any] = _typed(dict, {})
    per_example: dict[str, list] = _typed(dict, {})  # clean_correct, robust_correct, broken_by
    extra: dict[str, Any] = field(default_factory=dict, repr=False)  # keys from another version, kept as they are
    problems: list[str] = field(default_factory=list, repr=False)  # what from_json had to leave out
    path: Path | None = field(default=None, repr=False, compare=False)  # the results.json it was saved to / read from

    # ------------------------------------------------------------------------------------------------ JSON
    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            if "type" not in f.metadata:
                continue
            value = getattr(self, f.name)
            if f.name in ("paper_protocol_accuracy", "paper_protocol_accuracy_ci", "overestimation") and value is None:
                continue  # present only when the suite has a paper-protocol attack
            out[f.name] = value
        return {**out, **self.extra}

    @classmethod
    def from_json(cls, obj: Any) -> EvaluationResult:
        """Any results.json object; never raises on content (see ``problems``), only on a non-object."""
        if not isinstance(obj, dict):
            return cls(problems=["not a results.json object"])
        known = {f.name: f for f in fields(cls) if "type" in f.metadata}
        values: dict[str, Any] = {}
        problems: list[str] = []
        for name, f in known.items():
            if name not in obj:
                if name in ESSENTIAL:
                    problems.append(f"results.json has no {name}")
                continue
            value = obj[name]
            if _fits(value, f.metadata["type"]):
                values[name] = value
            elif value is not None:
                problems.append(f"results.json: {name} has the wrong type ({type(value).__name__})")
        extra = {k: v for k, v in obj.items() if k not in known}
        return cls(**values, extra=extra, problems=problems)

    @classmethod
    def load(cls, path: str | Path) -> EvaluationResult:
        """Read a results.json (or the folder holding one)."""
        path = Path(path)
        path = path / RESULTS_FILE if path.is_dir() else path
        result = cls.from_json(read_json(path))
        result.path = path
        return result

    def save(self, out_dir: str | Path) -> Path:
        """Write results.json and results.md (a human-readable report) into ``out_dir``, atomically."""
        from robust_uatt.viz.tables import attack_markdown

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / RESULTS_FILE, self.to_json())
        atomic_write_text(out / MARKDOWN_FILE, attack_markdown(self.to_json()))
        self.path = out / RESULTS_FILE
        return self.path

    # ------------------------------------------------------------------------------------------------ reading
    @property
    def name(self) -> str:
        return str(self.model.get("name") or self.model.get("label") or "?")

    @property
    def suite_name(self) -> str:
        """The suite's name (a plain string in some older files), else the attack's."""
        suite = self.suite.get("name") if isinstance(self.suite, dict) else self.suite
        return str(suite or self.attack or "?")

    @property
    def eps(self) -> float | None:
        """The L-inf radius in pixel [0, 1] units; None for an unbounded attack (CW)."""
        tm = self.threat_model
        if tm.get("bounded") is False:
            return None
        eps = tm.get("eps")
        if _fits(eps, NUMBER) and math.isfinite(eps):
            return float(eps)
        if "eps" not in tm and isinstance(tm.get("eps_text"), str):
            return parse_eps_text(tm["eps_text"])
        return None

    @property
    def unchecked(self) -> bool:
        """No sanity check ran (--checks none): a number, never a verdict, whatever an older ``valid`` says."""
        return self.verdict == "UNCHECKED" or self.checks_level == "none"

    @property
    def status(self) -> str:
        """valid, INVALID or UNCHECKED, for files written before the ``verdict`` field too."""
        if self.unchecked:
            return "UNCHECKED"
        return "valid" if self.valid else "INVALID"

    def require_valid(self) -> None:
        """Raise UserError when a gating sanity check failed (the result must not be reported as robust accuracy)."""
        if not self.valid:
            raise UserError("INVALID result: " + "; ".join(self.invalid_reasons))


def _fits(value: Any, kind: type | tuple[type, ...]) -> bool:
    if isinstance(value, bool):
        return kind is bool or (isinstance(kind, tuple) and bool in kind)
    if isinstance(value, float) and not math.isfinite(value):
        return False
    return isinstance(value, kind)


__all__ = ["EvaluationResult", "SCHEMA", "RESULTS_FILE", "MARKDOWN_FILE"]
