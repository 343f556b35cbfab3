"""Our attack results beside RobustBench leaderboard rows of the SAME threat model, never mixed across threat models.

A robust accuracy means something only for one threat model: dataset, norm (Linf / L2 / corruptions) and radius
eps. So every result of ours is matched to the leaderboard rows with the same dataset, norm and eps; a result without
such rows (other eps, other norm, other dataset, an unbounded attack, ``valid: false``) is listed separately as
"not comparable" with the reason, and never ranked. When nothing at all is comparable the comparison is refused
(UserError naming our threat models and the leaderboard's).

eps matching: RobustBench writes most Linf radii as ``8/255`` but some entries as ``0.031`` (8/255 rounded to three
decimals), so two radii are equal when ``|a - b| <= EPS_TOL`` = 5e-4 (half a unit of the third decimal). 8/255 and
0.031 match; 8/255 and 4/255 (0.0157) or 0.03 do not.

Units: leaderboard accuracies are percent (keys ``*_pct``), ours are fractions in [0, 1] (keys ``*_fraction``),
eps is in pixel units of images scaled to [0, 1].

Leaderboard rows shown in the table (the JSON lists all comparable rows): the top ``top`` by robust accuracy, the
undefended ``Standard`` model, and every (PreAct)ResNet-18 for scale; our rows are placed by robust accuracy among
all comparable rows (rank = 1 + number of leaderboard rows with strictly higher robust accuracy).
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rich.table import Table

from robust_uatt.evaluation.intervals import describe as describe_ci
from robust_uatt.evaluation.intervals import format_ci, interval
from robust_uatt.evaluation.results import EvaluationResult
from robust_uatt.utils.eps import parse_eps_text
from robust_uatt.utils.errors import UserError
from robust_uatt.viz.tables import terminal_text

EPS_TOL = 5e-4
FULL_TEST_POINTS = {"cifar10": 10_000, "cifar100": 10_000, "imagenet": 5_000}  # what RobustBench evaluates on
THREAT_MODELS = ("Linf", "L2", "corruptions", "corruptions_3d")
UNBOUNDED = ("corruptions", "corruptions_3d")  # no eps: the threat model is a fixed set of corruptions
METRICS = ("autoattack_acc", "corruptions_acc", "corruptions_acc_3d")
_SCALE_ARCH = re.compile(r"\b(PreAct)?ResNet-?18\b", re.IGNORECASE)
_NORMS = {"linf": "Linf", "l_inf": "Linf", "inf": "Linf", "l-inf": "Linf", "l2": "L2", "l_2": "L2", "2": "L2"}


# ---------------------------------------------------------------------------------------------------- parsing
def eps_equal(a: float | None, b: float | None) -> bool:
    """Equal within RobustBench's 3-decimal rounding (see the module docstring); None equals nothing."""
    return a is not None and b is not None and abs(a - b) <= EPS_TOL


def _percent(value: Any) -> float | None:
    """Leaderboard accuracy (a percent string like '93.60', or a number) -> float percent, else None."""
    if value is None or isinstance(value, bool):
        return None
    text = str(value).strip().rstrip("%").strip()
    try:
        out = float(text)
    except ValueError:
        return None
    return out if math.isfinite(out) else None


def _flag(value: Any) -> bool:
    return value is True or str(value).strip().lower() == "true"


def _norm(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return _NORMS.get(text.lower(), text)


def _eps_label(eps: float | None, text: str | None) -> str:
    if eps is None:
        return text or "-"
    if text and parse_eps_text(text) is not None and abs(parse_eps_text(text) - eps) < 1e-12 and "/" in text:
        return f"{text} ({eps:.4g})"
    return text or f"{eps:.4g}"


# ------------------------------------------------------------------------------------------------ leaderboard
@dataclass
class LeaderboardRow:
    model_id: str
    name: str
    architecture: str
    dataset: str
    threat_model: str
    eps: float | None
    eps_text: str
    clean_acc_pct: float | None
    robust_acc_pct: float | None
    metric: str
    unreliable: bool
    source: str

    def to_json(self) -> dict[str, Any]:
        return {"model_id": self.model_id, "name": self.name, "architecture": self.architecture,
                "clean_acc_pct": self.clean_acc_pct, "robust_acc_pct": self.robust_acc_pct, "metric": self.metric,
                "eps": self.eps, "eps_text": self.eps_text, "unreliable": self.unreliable, "source": self.source}


def _row_from_record(rec: dict[str, Any], dataset: str, threat_model: str, source: str) -> LeaderboardRow:
    metric = next((m for m in METRICS if rec.get(m) not in (None, "")), METRICS[0])
    eps_text = "" if rec.get("eps") is None else str(rec.get("eps")).strip()
    return LeaderboardRow(
        model_id=str(rec.get("model_id") or Path(source).stem).strip(),
        name=" ".join(str(rec.get("name") or "").split()),  # one RobustBench name ends in a newline
        architecture=" ".join(str(rec.get("architecture") or "").split()),
        dataset=str(rec.get("dataset") or dataset).strip() or dataset, threat_model=threat_model,
        eps=None if threat_model in UNBOUNDED else parse_eps_text(eps_text), eps_text=eps_text,
        clean_acc_pct=_percent(rec.get("clean_acc")), robust_acc_pct=_percent(rec.get(metric)), metric=metric,
        unreliable=_flag(rec.get("unreliable")), source=source)


def _csv_threat_model(path: Path) -> tuple[str, str] | None:
    """'cifar10_Linf.csv' -> ('cifar10', 'Linf'); other CSVs (e.g. the unaggregated corruptions table) -> None."""
    dataset, _, tm = path.stem.partition("_")
    return (dataset, tm) if dataset and tm in THREAT_MODELS else None


def _read_csv(path: Path) -> list[LeaderboardRow]:
    dataset, tm = _csv_threat_model(path)  # type: ignore[misc]
    try:
        with open(path, newline="", encoding="utf-8") as f:  # csv module: a quoted name may hold a newline
            records = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise UserError(f"{path}: unreadable leaderboard CSV ({e})") from None
    if records and "model_id" not in records[0]:
        raise UserError(f"{path}: not a RobustBench leaderboard CSV (no model_id column)")
    return [_row_from_record(r, dataset, tm, str(path)) for r in records]


def _read_model_info_json(path: Path) -> LeaderboardRow | None:
    """model_info/<dataset>/<threat_model>/<model_id>.json -> one row; files elsewhere in the tree are ignored."""
    tm, dataset = path.parent.name, path.parent.parent.name
    if tm not in THREAT_MODELS:
        return None
    try:
        rec = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: unreadable leaderboard entry ({e.__class__.__name__})") from None
    if not isinstance(rec, dict):
        raise UserError(f"{path}: leaderboard entry is not a JSON object")
    rec.setdefault("model_id", path.stem)
    return _row_from_record(rec, dataset, tm, str(path))


def default_leaderboard() -> Path:
    """$ROBUST_UATT_DATA/robustbench, the offline copy of the leaderboard."""
    data = os.environ.get("ROBUST_UATT_DATA")
    path = Path(data) / "robustbench" if data else None
    if path is None or not path.exists():
        raise UserError("no leaderboard: pass --leaderboard DIR (RobustBench model_info/ or <dataset>_<threat>.csv "
                        "files), or set ROBUST_UATT_DATA to a folder with robustbench/ in it")
    return path


def read_leaderboard(source: str | Path) -> list[LeaderboardRow]:
    """All rows of a leaderboard CSV, a folder of CSVs, or a model_info/ tree; duplicates (same id) kept once."""
    source = Path(source)
    if not source.exists():
        raise UserError(f"{source}: leaderboard not found")
    files = [source] if source.is_file() else sorted(source.rglob("*.csv")) + sorted(source.rglob("*.json"))
    rows: list[LeaderboardRow] = []
    for path in files:
        if path.suffix == ".csv" and _csv_threat_model(path):
            rows.extend(_read_csv(path))
        elif path.suffix == ".json":
            row = _read_model_info_json(path)
            rows.extend([row] if row else [])
    if not rows:
        raise UserError(f"{source}: no leaderboard rows (want <dataset>_<Linf|L2|corruptions>.csv files or "
                        f"model_info/<dataset>/<threat_model>/<id>.json)")
    seen: set[tuple[str, str, str]] = set()
    unique = []
    for row in rows:
        key = (row.dataset, row.threat_model, row.model_id)
        if key not in seen:
            seen.add(key)
            unique.append(row)
    return unique


@dataclass
class ThreatClass:
    """One leaderboard threat model: dataset + norm + one eps (rows within EPS_TOL of each other)."""
    dataset: str
    norm: str
    eps: float | None
    eps_text: str
    rows: list[LeaderboardRow] = field(default_factory=list)

    def label(self) -> str:
        eps = "" if self.norm in UNBOUNDED else f" eps={_eps_label(self.eps, self.eps_text)}"
        return f"{self.dataset} {self.norm}{eps}"

    def matches(self, dataset: str, norm: str | None, eps: float | None) -> bool:
        return (dataset == self.dataset and norm == self.norm and self.norm not in UNBOUNDED
                and any(eps_equal(eps, r.eps) for r in self.rows))


def threat_classes(rows: list[LeaderboardRow]) -> list[ThreatClass]:
    """Group rows by dataset, norm and eps (chained within EPS_TOL); rows without eps are left out (no radius)."""
    classes: list[ThreatClass] = []
    for row in rows:
        if row.threat_model not in UNBOUNDED and row.eps is None:
            continue
        for c in classes:
            if (c.dataset, c.norm) == (row.dataset, row.threat_model) and (
                    row.threat_model in UNBOUNDED or any(eps_equal(row.eps, r.eps) for r in c.rows)):
                c.rows.append(row)
                break
        else:
            classes.append(ThreatClass(row.dataset, row.threat_model, row.eps, row.eps_text, [row]))
    for c in classes:  # the most common spelling names the class ('8/255' rather than '0.031')
        if c.norm not in UNBOUNDED:
            c.eps_text = Counter(r.eps_text for r in c.rows).most_common(1)[0][0]
            c.eps = parse_eps_text(c.eps_text)
    return classes


# ------------------------------------------------------------------------------------------------ our results
@dataclass
class OurResult:
    path: str
    model: str
    label: str
    dataset: str
    norm: str | None
    eps: float | None
    eps_text: str
    clean_accuracy: float | None
    robust_accuracy: float | None
    n: int | None
    valid: bool
    lossless_fraction: float | None
    problem: str | None = None  # why it cannot be compared whatever the leaderboard holds
    clean_ci: list[float] | None = None  # 95% Clopper-Pearson intervals (fractions) over the n points
    robust_ci: list[float] | None = None
    autoattack: str = "none"  # "reference", "torchattacks port" or "none" (see _autoattack_impl)
    checks_level: str | None = None  # "none", "fast", "full"; None: not recorded
    training: str = ""  # the model's training budget from the recipe in results.json ("" when not recorded)
    # A suite that runs the reference AutoAttack first and more attacks after it (``defended``): the robust column is
    # the worst case over all of them, and this is AutoAttack's own number (its first stage); None otherwise.
    autoattack_alone: float | None = None
    more_attacks: int = 0  # how many attacks ran after that first AutoAttack stage

    @property
    def unchecked(self) -> bool:
        """Run without sanity checks (``--checks none``): never ranked beside checked numbers."""
        return self.checks_level == "none"

    def robustbench_caveats(self) -> list[str]:
        """Why this number is not comparable with a RobustBench row (reference AutoAttack on the full test set,
        exact images); empty when it is."""
        out = []
        full = FULL_TEST_POINTS.get(self.dataset)
        if self.n is None or (full is not None and self.n < full):
            width = "" if self.robust_ci is None else f", 95% CI +-{50 * (self.robust_ci[1] - self.robust_ci[0]):.1f}"
            out.append(f"n={self.n or '?'} < the leaderboard's {full or 'full'} test images{width}")
        if self.autoattack == "torchattacks port":
            out.append("torchattacks' AutoAttack port, not the reference implementation")
        elif self.autoattack != "reference":
            out.append(f"suite '{self.label}' is not AutoAttack (other attacks, other budgets)")
        elif self.more_attacks:
            alone = "" if self.autoattack_alone is None else f" (AutoAttack alone: {100 * self.autoattack_alone:.2f}%)"
            out.append(f"robust = worst case over the reference AutoAttack and {self.more_attacks} more attacks, "
                       f"a stricter number than AutoAttack's{alone}")
        if self.checks_level is None:
            out.append("checks level not recorded")
        if self.lossless_fraction is not None and self.lossless_fraction < 1:
            out.append(f"{100 * (1 - self.lossless_fraction):.1f}% of the images are not the exact test images")
        return out

    def row_info(self) -> list[str]:
        """suite, AutoAttack implementation, n, checks level, lossless fraction: the table's per-row columns."""
        lossless = "?" if self.lossless_fraction is None else f"{100 * self.lossless_fraction:.0f}%"
        label = f"{self.label}; trained: {self.training}" if self.training else self.label
        return [label, self.autoattack, str(self.n or "?"), self.checks_level or "?", lossless]

    def threat_label(self) -> str:
        eps = "unbounded" if self.eps is None else _eps_label(self.eps, self.eps_text)
        return f"{self.dataset} {self.norm or '?'} eps={eps}"

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "label": self.label, "path": self.path, "dataset": self.dataset,
                "norm": self.norm, "eps": self.eps, "eps_text": self.eps_text,
                "clean_accuracy_fraction": self.clean_accuracy, "robust_accuracy_fraction": self.robust_accuracy,
                "clean_acc_pct": _to_pct(self.clean_accuracy), "robust_acc_pct": _to_pct(self.robust_accuracy),
                "clean_acc_ci_pct": _ci_pct(self.clean_ci), "robust_acc_ci_pct": _ci_pct(self.robust_ci),
                "n": self.n, "valid": self.valid, "lossless_fraction": self.lossless_fraction, "suite": self.label,
                "autoattack_impl": self.autoattack, "checks_level": self.checks_level, "training": self.training,
                "autoattack_alone_pct": _to_pct(self.autoattack_alone), "attacks_after_autoattack": self.more_attacks}


def _to_pct(x: float | None) -> float | None:
    return None if x is None else round(100 * x, 4)


def _ci_pct(ci: list[float] | None) -> list[float] | None:
    return None if ci is None else [round(100 * ci[0], 4), round(100 * ci[1], 4)]


def _stored_ci(value: Any) -> list[float] | None:
    """A ``*_ci`` pair from results.json, if well formed."""
    if isinstance(value, list) and len(value) == 2 and all(_fraction(v) is not None for v in value):
        return [float(value[0]), float(value[1])]
    return None


def _fraction(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _our_eps(tm: dict[str, Any]) -> tuple[float | None, str]:
    """eps of a results.json threat model; an unbounded attack (or one without eps) has None."""
    text = "" if tm.get("eps_text") is None else str(tm["eps_text"])
    if tm.get("bounded") is False:
        return None, text
    eps = _fraction(tm.get("eps"))
    if eps is None and "eps" not in tm:
        eps = parse_eps_text(text)
    return eps, text


def _problem(res: EvaluationResult, norm: str | None, eps: float | None, robust: float | None) -> str | None:
    if not res.valid and not res.unchecked:
        why = res.invalid_reasons
        return "INVALID result (valid: false)" + (f": {why[0]}" if why else "")
    if norm is None:
        return "results.json has no threat_model.norm"
    if eps is None:
        return "unbounded attack (no eps): no leaderboard threat model"
    if robust is None:
        return "results.json has no robust_accuracy"
    return None


def parse_result(res: Any, path: str) -> OurResult:
    """One result (an EvaluationResult or a results.json object) -> OurResult; missing optional fields are fine,
    missing essentials become a problem."""
    r = res if isinstance(res, EvaluationResult) else EvaluationResult.from_json(res)
    tm, data = r.threat_model, r.data
    norm = _norm(tm.get("norm"))
    eps, eps_text = _our_eps(tm)
    robust = r.robust_accuracy
    empty = not isinstance(res, EvaluationResult) and not res
    model = r.model.get("name") or r.model.get("label") or Path(path).parent.name
    recorded = isinstance(res, EvaluationResult) or (isinstance(res, dict) and "checks_level" in res)
    return OurResult(path=path, model=str(model), label=r.suite_name, dataset=str(data.get("dataset") or "cifar10"),
                     norm=norm, eps=eps, eps_text=eps_text, clean_accuracy=r.clean_accuracy, robust_accuracy=robust,
                     n=r.n, valid=r.valid, lossless_fraction=_fraction(data.get("lossless_fraction")),
                     problem="not a results.json object" if empty else _problem(r, norm, eps, robust),
                     clean_ci=_stored_ci(_field(r, "clean_accuracy_ci")) or interval(r.clean_accuracy, r.n),
                     robust_ci=_stored_ci(_field(r, "robust_accuracy_ci")) or interval(robust, r.n),
                     autoattack=_autoattack_impl(r), checks_level=_checks_level(r, recorded),
                     training=training_summary(_dict(r.model)), **_autoattack_stage(r))


def training_summary(model: dict[str, Any]) -> str:
    """The training budget behind a result, from the recipe its results.json records: width, epochs, optimizer,
    schedule, adversarial training (or clean) and seed, e.g. 'width 0.5, 15 ep, sgd onecycle, fgsm-rs 8/255, seed 0'.
    Empty when the result records no robust-uatt recipe (a RobustBench or factory model)."""
    recipe = _dict(model.get("recipe"))
    train, spec, adv = _dict(recipe.get("train")), _dict(recipe.get("model")), _dict(recipe.get("adv"))
    if not train:
        return ""
    parts = []
    width = spec.get("width", spec.get("vgg_width"))
    if isinstance(width, (int, float)) and not isinstance(width, bool):
        parts.append(f"width {width:g}")
    if isinstance(train.get("epochs"), int):
        parts.append(f"{train['epochs']} ep")
    parts.append(" ".join(str(train[k]) for k in ("optimizer", "schedule") if isinstance(train.get(k), str)))
    kind = adv.get("kind")
    parts.append(f"{kind} {adv.get('eps', '?')}" if isinstance(kind, str) and kind else "clean")
    seed = model.get("train_seed")
    if isinstance(seed, int) and not isinstance(seed, bool):
        parts.append(f"seed {seed}")
    return ", ".join(p for p in parts if p)


def _field(r: EvaluationResult, name: str) -> Any:
    """A field of the result whether EvaluationResult declares it or keeps it in ``extra`` (another version's)."""
    return getattr(r, name, None) if hasattr(r, name) else r.extra.get(name)


def _autoattack_impl(r: EvaluationResult) -> str:
    """Which AutoAttack produced the number: the result's own ``autoattack_impl`` when it records one, else the
    ``implementation`` of its ``autoattack`` row; "none" for a suite without AutoAttack."""
    recorded = _field(r, "autoattack_implementation") or _field(r, "autoattack_impl")
    if isinstance(recorded, str) and recorded:
        text = recorded.lower()
        return "reference" if text.startswith("reference") else \
            "torchattacks port" if "port" in text or "torchattacks" in text else recorded
    for row in r.attacks:
        if isinstance(row, dict) and row.get("name") == "autoattack":
            impl = str(row.get("implementation") or "")
            return "reference" if impl.startswith("reference") else "torchattacks port"
    return "none"


def _autoattack_stage(r: EvaluationResult) -> dict[str, Any]:
    """A cascade whose first attack is AutoAttack followed by more attacks: AutoAttack's own robust accuracy (the
    first row saw every clean-correct point; ``seeds.autoattack_alone``) and how many attacks followed it."""
    from robust_uatt.benchmark.seeds import autoattack_alone

    rows = [row for row in r.attacks if isinstance(row, dict)]
    if len(rows) < 2 or rows[0].get("name") != "autoattack":
        return {}
    return {"autoattack_alone": autoattack_alone(r), "more_attacks": len(rows) - 1}


def _checks_level(r: EvaluationResult, recorded: bool) -> str | None:
    """"none" for an UNCHECKED result (``verdict`` or ``checks_level``), else the level; None when not recorded."""
    if str(_field(r, "verdict") or "").upper() == "UNCHECKED":
        return "none"
    return r.checks_level if recorded and r.checks_level else None


def _results_files(spec: str, runs_dir: str | Path) -> list[Path]:
    """--model: a results.json, a folder holding one (or runs holding them), or a zoo name -> its attack results."""
    path = Path(spec)
    if path.is_file():
        return [path]
    if path.is_dir():
        found = [path / "results.json"] if (path / "results.json").is_file() else sorted(path.glob("*/results.json"))
        if not found:
            raise UserError(f"{path}: no results.json in it (nor in its subfolders)")
        return found
    folder = Path(runs_dir) / "attacks" / spec.replace(":", "_")  # as the harness names it (e.g. robustbench:X)
    found = sorted(folder.glob("*/results.json"))
    if not found:
        raise UserError(f"no attack results for '{spec}': not a file or folder, and nothing under "
                        f"{folder}/*/results.json (run `robust-uatt attack --model {spec}`)")
    return found


def load_results(specs: list[str], runs_dir: str | Path) -> list[OurResult]:
    """Every results.json the --model arguments name, each once; an unreadable file is a not-comparable row."""
    results, seen = [], set()
    for spec in specs:
        for path in _results_files(spec, runs_dir):
            key = path.resolve()
            if key in seen:
                continue
            seen.add(key)
            try:
                raw = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
                results.append(parse_result({}, str(path)))
                results[-1].problem = f"unreadable results.json ({e.__class__.__name__})"
                continue
            results.append(parse_result(raw, str(path)))
    return results


# ------------------------------------------------------------------------------------------------- comparison
@dataclass
class Comparison:
    """One threat model: its leaderboard rows (best first), our results placed among them, rows left out."""
    threat: ThreatClass
    ranked: list[LeaderboardRow]
    ours: list[tuple[OurResult, int]]  # (result, rank among the leaderboard rows)
    excluded: list[dict[str, Any]]
    shown: dict[str, str]  # model_id -> why it is in the table


def _not_comparable_reason(r: OurResult, classes: list[ThreatClass]) -> str:
    """Why no leaderboard threat model fits: the nearest mismatch, said plainly."""
    if r.problem:
        return r.problem
    same_data = [c for c in classes if c.dataset == r.dataset]
    if not same_data:
        return f"other dataset: no {r.dataset} rows on the leaderboard"
    same_norm = [c for c in same_data if c.norm == r.norm]
    if not same_norm:
        norms = ", ".join(sorted({c.norm for c in same_data}))
        return f"other norm: the {r.dataset} leaderboard has {norms}, not {r.norm}"
    return (f"other eps: ours {_eps_label(r.eps, r.eps_text)}, the {r.dataset} {r.norm} leaderboard has "
            f"{', '.join(_eps_label(c.eps, c.eps_text) for c in same_norm)}")


def _shown_rows(ranked: list[LeaderboardRow], top: int) -> dict[str, str]:
    """Which leaderboard rows the table shows, and why: top-k, the undefended Standard, ResNet-18s for scale."""
    shown: dict[str, str] = {}
    for row in ranked[:top]:
        shown[row.model_id] = "top"
    for row in ranked:
        if row.model_id == "Standard":
            shown.setdefault(row.model_id, "undefended")
        elif _SCALE_ARCH.search(row.architecture):
            shown.setdefault(row.model_id, "ResNet-18 scale")
    return shown


def _excluded(c: ThreatClass, rows: list[LeaderboardRow]) -> list[dict[str, Any]]:
    """Leaderboard rows of the same dataset and norm that are NOT in this comparison: other eps, no eps, no metric."""
    out = []
    for row in rows:
        if (row.dataset, row.threat_model) != (c.dataset, c.norm):
            continue
        if row.eps is None:
            out.append({"model_id": row.model_id, "eps_text": row.eps_text, "reason": "no eps on the leaderboard"})
        elif row not in c.rows:
            out.append({"model_id": row.model_id, "eps_text": row.eps_text, "eps": row.eps, "reason": "other eps"})
        elif row.robust_acc_pct is None:
            out.append({"model_id": row.model_id, "eps_text": row.eps_text, "reason": f"no {row.metric}"})
    return out


def _rank(robust_pct: float, ranked: list[LeaderboardRow]) -> int:
    return 1 + sum(1 for row in ranked if row.robust_acc_pct is not None and row.robust_acc_pct > robust_pct)


@dataclass
class Report:
    comparisons: list[Comparison]
    not_comparable: list[tuple[OurResult, str]]
    leaderboard: str
    top: int

    def to_json(self) -> dict[str, Any]:
        """The JSON written next to the table: units in the key names, comparable and not comparable apart."""
        return {
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "leaderboard_source": self.leaderboard,
            "units": {"*_pct": "percent (0-100), as RobustBench reports", "*_fraction": "fraction (0-1), as "
                      "results.json reports", "eps": "pixel units of images in [0, 1]"},
            "eps_tolerance": EPS_TOL,
            "confidence_interval": {**describe_ci(), "keys": "ours: clean_acc_ci_pct / robust_acc_ci_pct (percent)"},
            "comparable_meaning": "ours: comparable_with_robustbench only for reference AutoAttack on the full test "
                                  "set of exact images with sanity checks; otherwise the rank is indicative and "
                                  "not_comparable_because says why; UNCHECKED results are never ranked",
            "rank_meaning": "ours: 1 + number of comparable leaderboard rows with strictly higher robust accuracy, "
                            "out of those rows plus this result (each result is ranked on its own)",
            "table_rows": f"top {self.top} by robust accuracy, plus Standard (undefended) and (PreAct)ResNet-18s",
            "comparisons": [_comparison_json(c) for c in self.comparisons],
            "not_comparable": [{**r.to_json(), "reason": reason} for r, reason in self.not_comparable],
        }


def _comparison_json(c: Comparison) -> dict[str, Any]:
    return {
        "threat_model": {"dataset": c.threat.dataset, "norm": c.threat.norm, "eps": c.threat.eps,
                         "eps_text": c.threat.eps_text, "label": c.threat.label()},
        "leaderboard_metric": c.ranked[0].metric if c.ranked else None,
        "ours": [{**r.to_json(), "rank": rank, "of": len(c.ranked) + 1,
                  "comparable_with_robustbench": not r.robustbench_caveats(),
                  "not_comparable_because": r.robustbench_caveats()} for r, rank in c.ours],
        "leaderboard": [{"rank": i + 1, **row.to_json(), "shown_in_table": row.model_id in c.shown,
                         "why_shown": c.shown.get(row.model_id)} for i, row in enumerate(c.ranked)],
        "excluded_leaderboard_rows": c.excluded,
    }


def compare(ours: list[OurResult], rows: list[LeaderboardRow], top: int = 10, source: str = "") -> Report:
    """Match each result to its leaderboard threat model; refuse (UserError) when nothing is comparable."""
    classes = threat_classes(rows)
    groups: dict[int, list[OurResult]] = {}
    not_comparable: list[tuple[OurResult, str]] = []
    for r in ours:
        idx = None if r.problem else next(
            (i for i, c in enumerate(classes) if c.matches(r.dataset, r.norm, r.eps)), None)
        if idx is None:
            not_comparable.append((r, _not_comparable_reason(r, classes)))
        elif r.unchecked:
            not_comparable.append((r, "UNCHECKED (--checks none): no sanity check vouches for this number; never "
                                      "ranked beside checked results"))
        else:
            groups.setdefault(idx, []).append(r)
    if not groups:
        raise UserError(_refusal(ours, not_comparable, classes))
    comparisons = []
    for idx, results in groups.items():
        c = classes[idx]
        ranked = sorted((row for row in c.rows if row.robust_acc_pct is not None),
                        key=lambda row: (-row.robust_acc_pct, -(row.clean_acc_pct or 0.0)))
        placed = sorted(((r, _rank(100 * r.robust_accuracy, ranked)) for r in results),  # type: ignore[operator]
                        key=lambda pair: -pair[0].robust_accuracy)  # type: ignore[operator]
        comparisons.append(Comparison(c, ranked, placed, _excluded(c, rows), _shown_rows(ranked, top)))
    return Report(comparisons, not_comparable, source, top)


def _refusal(ours: list[OurResult], not_comparable: list[tuple[OurResult, str]], classes: list[ThreatClass]) -> str:
    mine = sorted({r.threat_label() for r in ours if not r.problem})
    invalid = sum(1 for r in ours if not r.valid and not r.unchecked)
    other = [reason for r, reason in not_comparable if r.problem and r.valid]
    parts = [f"nothing to compare: our threat model(s) {', '.join(mine)}" if mine else "nothing to compare"]
    if invalid:
        parts.append(f"{invalid} INVALID result(s) (valid: false)")
    unchecked = sum(1 for r in ours if r.unchecked and not r.problem)
    if unchecked:
        parts.append(f"{unchecked} UNCHECKED result(s) (--checks none), never ranked")
    if other:
        parts.append(f"{len(other)} result(s) unusable ({other[0]})")
    available = ", ".join(c.label() for c in classes) or "none"
    return f"{'; '.join(parts)}; the leaderboard has: {available}"


# ------------------------------------------------------------------------------------------------------ tables
def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}%"


def _with_ci(fraction: float | None, ci: list[float] | None) -> str:
    """'85.20% [82.9, 87.3]': our accuracy with its 95% interval (the leaderboard's full test set has none shown)."""
    return _fmt(_to_pct(fraction)) + (f" {format_ci(ci)}" if ci else "")


def comparison_table(c: Comparison) -> Table:
    """Leaderboard rows (top-k, Standard, ResNet-18s) with ours in bold at their rank; gaps shown as '…'."""
    n = len(c.ranked)
    table = Table(title=terminal_text(f"{c.threat.label()}: RobustBench ({c.ranked[0].metric if n else 'metric'}) vs "
                                      f"ours"), caption=terminal_text(_caption(c)))
    for col in ("rank", "model", "architecture / suite", "AutoAttack", "n", "checks", "lossless", "clean", "robust",
                "note"):
        table.add_column(col, justify="right" if col in ("rank", "n", "lossless", "clean", "robust") else "left",
                         overflow="fold")
    gap = ("…",) + ("",) * 9
    entries: list[tuple[int, int, Any]] = [(i + 1, 1, row) for i, row in enumerate(c.ranked) if row.model_id in c.shown]
    entries += [(rank, 0, r) for r, rank in c.ours]  # ours sort before the leaderboard row it ties with
    entries.sort(key=lambda e: (e[0], e[1], -(e[2].robust_accuracy or 0) if e[1] == 0 else 0))
    last = 0  # the leaderboard rows 1..last are shown or marked as skipped ('…')
    for rank, kind, item in entries:
        above = rank - 1 if kind == 0 else rank  # ours at rank k sits below leaderboard rows 1..k-1
        if above > last + (kind == 1):
            table.add_row(*gap)
        last = max(last, above)
        if kind == 0:
            caveats = item.robustbench_caveats()
            table.add_row(f"({rank}/{n + 1})" if caveats else f"#{rank}/{n + 1}", terminal_text(item.model),
                          *map(terminal_text, item.row_info()),
                          _with_ci(item.clean_accuracy, item.clean_ci), _with_ci(item.robust_accuracy, item.robust_ci),
                          terminal_text("ours; NOT COMPARABLE: " + "; ".join(caveats)) if caveats else "ours",
                          style="bold yellow" if caveats else "bold")
        else:
            note = {"top": "", "undefended": "undefended", "ResNet-18 scale": "for scale"}[c.shown[item.model_id]]
            note = ", ".join(x for x in (note, "unreliable" if item.unreliable else "") if x)
            table.add_row(str(rank), terminal_text(item.model_id), terminal_text(item.architecture), "reference",
                          "full", "-", "-", _fmt(item.clean_acc_pct), _fmt(item.robust_acc_pct), note)
    if last < n:
        table.add_row(*gap)
    return table


def _caption(c: Comparison) -> str:
    other = sum(1 for e in c.excluded if e["reason"] == "other eps")
    text = (f"{len(c.ranked)} comparable leaderboard rows (AutoAttack, full test set); ours: the named attack on the "
            f"first n test images (an attack weaker than AutoAttack overstates robustness); [lo, hi]: 95% "
            f"Clopper-Pearson interval over our n points; a rank in parentheses is indicative only: that row is not "
            f"comparable with RobustBench's (see its note)")
    return text + (f"; {other} leaderboard rows at another eps not comparable, left out" if other else "")


def not_comparable_table(items: list[tuple[OurResult, str]]) -> Table:
    """Our rows that match no leaderboard threat model: shown apart, never ranked."""
    table = Table(title="not comparable (never ranked)")
    for col in ("model", "suite", "AutoAttack", "n", "checks", "lossless", "threat model", "clean", "robust", "reason"):
        table.add_column(col, justify="right" if col in ("n", "lossless", "clean", "robust") else "left",
                         overflow="fold")
    for r, reason in items:
        table.add_row(terminal_text(r.model), *map(terminal_text, r.row_info()), terminal_text(r.threat_label()),
                      _with_ci(r.clean_accuracy, r.clean_ci), _with_ci(r.robust_accuracy, r.robust_ci),
                      terminal_text(reason),
                      style="red" if not r.valid or r.unchecked else None)
    return table


def report_tables(report: Report) -> list[Table]:
    return [comparison_table(c) for c in report.comparisons] + (
        [not_comparable_table(report.not_comparable)] if report.not_comparable else [])
