"""Attack suites: attacks/<name>.toml, validated (unknown keys and wrong types reported with file and key).

    description = "..."
    [[attacks]]
    name = "pgd-eq14"        # a name from robust_uatt.attacks.ATTACKS
    steps = 30               # optional: the attack's default otherwise
    role = "paper"           # optional: the paper-protocol row (never cascaded; gives the overestimation column)
    options = { grad_path = "vgg" }
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from robust_uatt.attacks import ATTACKS
from robust_uatt.utils import toml
from robust_uatt.utils.errors import UserError, unknown_name
from robust_uatt.utils.resources import find_toml, toml_names

ENTRY_KEYS = {"name": str, "steps": int, "eot": int, "role": str, "options": dict}
ROLES = ("paper", "")
PROBE_STEPS = {"noise": 20, "pgd-ce": 10}  # the cheap probes with_probes adds


@dataclass
class SuiteEntry:
    name: str
    steps: int | None = None
    eot: int | None = None
    role: str = ""
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class Suite:
    name: str
    description: str
    entries: list[SuiteEntry]

    @property
    def paper_attack(self) -> str | None:
        return next((e.name for e in self.entries if e.role == "paper"), None)


def suite_names() -> list[str]:
    return toml_names("robust_uatt.suites", "attacks")


def load_suite(name: str) -> Suite:
    path = find_toml(name, "robust_uatt.suites", "attacks", "suite")
    try:
        raw = toml.loads(path.read_text(encoding="utf-8"))
    except (toml.TOMLDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise UserError(f"{path}: invalid TOML ({e.__class__.__name__}: {str(e).splitlines()[0] if str(e) else ''})") \
            from None
    except OSError as e:
        raise UserError(f"{path}: cannot read suite ({e.strerror or e})") from None
    for key in raw:
        if key not in ("description", "attacks"):
            raise unknown_name(f"top-level key in {path}:", key, ("description", "attacks"))
    entries_raw = raw.get("attacks")
    if not isinstance(entries_raw, list) or not entries_raw:
        raise UserError(f"{path}: needs at least one [[attacks]] entry")
    entries = []
    for i, e in enumerate(entries_raw):
        where = f"{path} [[attacks]] #{i + 1}"
        if not isinstance(e, dict):
            raise UserError(f"{where}: must be a table")
        for key, value in e.items():
            if key not in ENTRY_KEYS:
                raise unknown_name(f"key in {where}:", key, ENTRY_KEYS)
            if not isinstance(value, ENTRY_KEYS[key]) or isinstance(value, bool):
                raise UserError(f"{where}: {key} must be {ENTRY_KEYS[key].__name__}, got {type(value).__name__}")
        if "name" not in e:
            raise UserError(f"{where}: needs a name")
        if e["name"] not in ATTACKS:
            raise unknown_name(f"attack in {where}:", e["name"], ATTACKS)
        if e.get("role", "") not in ROLES:
            raise unknown_name(f"role in {where}:", e["role"], ("paper",))
        for key in ("steps", "eot"):
            if key in e and e[key] < 1:  # 0 would silently become the default; negative makes no sense
                raise UserError(f"{where}: {key} must be >= 1, got {e[key]}")
        ATTACKS[e["name"]].check_options(e.get("options", {}), where)  # names, types, ranges and choices
        entries.append(SuiteEntry(e["name"], e.get("steps"), e.get("eot"), e.get("role", ""), e.get("options", {})))
    if sum(e.role == "paper" for e in entries) > 1:
        raise UserError(f"{path}: at most one attack may have role = \"paper\"")
    return Suite(path.stem, str(raw.get("description", "")), entries)


def with_probes(suite: Suite) -> Suite:
    """The suite plus a cheap gradient-free probe (uniform noise, 20 draws) when it has no black-box attack, and a
    cheap white-box one (PGD-CE-10) when it has no white-box attack, so that the gating check "black-box <=
    white-box" always runs (single attacks, the paper and quick suites). Probes join the cascade like any attack:
    the worst case includes them. Unbounded (minimal-perturbation) runs are left alone."""
    kinds = [ATTACKS[e.name] for e in suite.entries]
    if any(not k.bounded for k in kinds):
        return suite
    extra = []
    if all(k.white_box for k in kinds):
        extra.append(SuiteEntry("noise", PROBE_STEPS["noise"], None, "probe"))
    if not any(k.white_box for k in kinds):
        extra.append(SuiteEntry("pgd-ce", PROBE_STEPS["pgd-ce"], None, "probe"))
    return Suite(suite.name, suite.description, suite.entries + extra)
