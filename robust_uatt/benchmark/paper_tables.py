"""The paper's error-rate tables (1: MNIST, 2: cluttered MNIST, 3: multi-digit) beside our finished runs.

``robust-uatt paper-table N`` (``api.paper_table``) finds every zoo recipe whose ``paper`` field names Table N, reads
the model cards of its finished runs under ``RUNS/<name>/*/`` (optionally of one preset), and reports per paper row:
the paper's error, our test error as mean ± sample std over training seeds, each seed's error with its n and 95%
Clopper-Pearson interval, and the budget each seed actually got (epochs run, the selected epoch, preset). A row
without finished runs says so; nothing is filled in. Error = 1 - test accuracy (whole sequences for Table 3).
"""

from __future__ import annotations

import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from robust_uatt.evaluation.intervals import clopper_pearson
from robust_uatt.models.zoo import load_recipe, recipe_names
from robust_uatt.utils.errors import UserError, printable
from robust_uatt.utils.files import read_json

TABLES = (1, 2, 3)
_PAPER_ERROR = re.compile(r"([0-9]+(?:\.[0-9]+)?)%\s*$")


@dataclass
class PaperRow:
    """One row of a paper table: the recipe that reproduces it and the cards of its finished runs."""

    recipe: str
    paper: str  # the recipe's ``paper`` text, e.g. "Table 1: RAM, 6 glimpses, 8x8, 1 scale, 1.12%"
    cards: list[dict[str, Any]] = field(default_factory=list)

    @property
    def paper_error(self) -> float | None:
        match = _PAPER_ERROR.search(self.paper)
        return float(match.group(1)) / 100 if match else None

    @property
    def label(self) -> str:
        text = self.paper.split(":", 1)[-1].strip()
        return _PAPER_ERROR.sub("", text).rstrip(" ,")

    def seeds(self) -> list[dict[str, Any]]:
        out = []
        for card in self.cards:
            acc, n = card["accuracy"]["test"], card["data"]["test_n"]
            wrong = round((1 - acc) * n)
            selection = card.get("selection") or {}
            out.append({"seed": card.get("seed"), "error": wrong / n, "wrong": wrong, "n": n,
                        "ci95": list(clopper_pearson(wrong, n)), "preset": card.get("preset"),
                        "epochs_run": card.get("epochs_run"), "epochs": card.get("epochs"),
                        "selected_epoch": selection.get("best_epoch"), "command": card.get("command"),
                        "commit": (card.get("versions") or {}).get("commit"), "run": card.get("_run")})
        return out

    def to_json(self) -> dict[str, Any]:
        seeds = self.seeds()
        errors = [s["error"] for s in seeds]
        return {"recipe": self.recipe, "paper_row": self.label, "paper_error": self.paper_error,
                "seeds": seeds, "n_seeds": len(seeds),
                "error_mean": statistics.fmean(errors) if errors else None,
                "error_std": statistics.stdev(errors) if len(errors) > 1 else None}


def paper_rows(table: int, runs_dir: str | Path = "runs", preset: str | None = None,
               records: str | Path | None = None) -> list[PaperRow]:
    """The rows of paper table ``table`` with the finished runs of each (of ``preset`` when given; "none": only the
    runs of the recipes themselves, without a preset).

    ``records``: read committed run records instead of run folders: ``RECORDS/<recipe>-seed<S>[-<preset>]/``
    holding the model card a finished run wrote (docs/results/tables/runs/, see docs/results/tables/run.sh), so a
    table is rebuilt from the repository alone; a record counts only when its card names that recipe."""
    if table not in TABLES:
        raise UserError(f"the paper's error tables are {', '.join(map(str, TABLES))}; got {table}")
    wanted = None if preset == "none" else preset  # "none": runs of the recipes themselves, no preset
    rows = []
    for name in recipe_names():
        recipe = load_recipe(name)
        if not recipe.paper.startswith(f"Table {table}:"):
            continue
        row = PaperRow(name, recipe.paper)
        for card_path in _card_paths(name, runs_dir, records):
            card = read_json(card_path)
            if records is not None and (not isinstance(card, dict) or card.get("name") != name):
                continue  # a record counts for the recipe its card names, whatever its folder says
            if not _is_card(card) or (preset is not None and card.get("preset") != wanted):
                continue
            row.cards.append({**card, "_run": str(card_path.parent)})
        seeds = [c.get("seed") for c in row.cards]
        if len(set(seeds)) != len(seeds):
            raise UserError(f"{name}: several finished runs with the same seed under "
                            f"{Path(records) if records is not None else Path(runs_dir) / name}; "
                            "keep one per seed (or name a --preset)")
        rows.append(row)
    return rows


def _card_paths(name: str, runs_dir: str | Path, records: str | Path | None) -> list[Path]:
    """Model cards of the finished runs of recipe ``name``: RUNS/<name>/*/ with its weights, or the records."""
    if records is not None:
        return sorted(Path(records).glob(f"{name}-seed*/model_card.json"))
    return [p for p in sorted((Path(runs_dir) / name).glob("*/model_card.json"))
            if (p.parent / "model.safetensors").is_file()]  # a run without weights is not finished


def _is_card(card: Any) -> bool:
    try:
        acc, n = card["accuracy"]["test"], card["data"]["test_n"]
    except (KeyError, TypeError):
        return False
    return isinstance(acc, (int, float)) and isinstance(n, int) and n > 0 and 0 <= acc <= 1


def _pct(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{100 * x:.{digits}f}%"


def table_markdown(table: int, rows: list[PaperRow]) -> str:
    """The paper's error beside ours (mean ± std over seeds), each seed with its interval and budget."""
    lines = [f"| Table {table} row | paper error | ours: error (mean ± std) | seeds | per seed: error [95% CI], n, "
             "epochs run (selected) |", "|---|---:|---:|---:|---|"]
    for row in rows:
        j = row.to_json()
        ours = _pct(j["error_mean"]) + (f" ± {100 * j['error_std']:.2f}" if j["error_std"] is not None else "")
        per_seed = "; ".join(
            f"s{s['seed']}: {_pct(s['error'])} [{100 * s['ci95'][0]:.2f}, {100 * s['ci95'][1]:.2f}], n={s['n']}, "
            f"{s['epochs_run']} ep" + (f" ({s['selected_epoch']})" if s["selected_epoch"] else "")
            for s in j["seeds"]) or "not run"
        lines.append(f"| {printable(row.label)} (`{row.recipe}`) | {_pct(row.paper_error)} | "
                     f"{ours if j['seeds'] else '-'} | {j['n_seeds']} | {printable(per_seed)} |")
    return "\n".join(lines) + "\n"


__all__ = ["PaperRow", "paper_rows", "table_markdown", "TABLES"]
