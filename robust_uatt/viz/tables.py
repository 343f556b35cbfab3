"""What a person reads: rich tables on the terminal, Markdown next to results.json."""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.markup import escape
from rich.table import Table

from robust_uatt.evaluation.intervals import format_ci, interval, pct_ci
from robust_uatt.utils.errors import printable


def terminal_text(value: Any) -> str:
    """Data (names from checkpoints, results.json, leaderboards) for a rich table: control characters escaped and
    rich markup ('[/bold]') shown as text, never interpreted."""
    return escape(printable(value))


def plot_text(value: Any) -> str:
    """Data for a matplotlib title: control characters escaped and '$' literal (never parsed as mathtext)."""
    return printable(value).replace("$", r"\$")


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def _ci(holder: dict[str, Any], key: str, n: int) -> str:
    """The 95% interval of ``holder[key]`` as '[lo, hi]' in percent: the stored one, else computed from n."""
    return format_ci(holder.get(f"{key}_ci") or interval(holder.get(key), n))


def threat_model_text(tm: dict[str, Any]) -> str:
    if not tm["bounded"]:
        return f"{tm['norm']} minimal (unbounded)"
    return f"{tm['norm']} eps={tm['eps_text']} ({tm['eps']:.4g})"


def _attack_budget(row: dict[str, Any]) -> str:
    extra = f", eot {row['eot']}" if row.get("eot", 1) > 1 else ""
    if row.get("components"):  # AutoAttack: what each component really ran
        return ", ".join(f"{c['name']} {c.get('iterations', c.get('queries'))}" for c in row["components"]) + extra
    return f"{row['steps']} {row['steps_meaning']}{extra}"


def attack_label(row: dict[str, Any]) -> str:
    """The attack's name, or its labelled implementation (AutoAttack: reference or torchattacks port)."""
    return str(row.get("label") or row["name"]) + (" (probe)" if row.get("role") == "probe" else "")


def verdict(result: dict[str, Any]) -> str:
    """valid, INVALID (a gating check failed) or UNCHECKED (--checks none: a number, never a verdict)."""
    if result.get("verdict") in ("valid", "INVALID", "UNCHECKED"):
        return result["verdict"]
    if result.get("checks_level") == "none":
        return "UNCHECKED"
    return "valid" if result.get("valid") else "INVALID"


def attack_table(result: dict[str, Any]) -> Group:
    """Per-attack cascade rows and the headline (worst case over the suite); the sanity checks below them."""
    status = verdict(result)
    valid = status == "valid"
    title = (terminal_text(f"{result['model']['name']} | {result['suite']['name']} | "
                           f"{threat_model_text(result['threat_model'])} | n={result['n']}")
             + ("" if valid else f"  [bold red]{status}[/]"))
    table = Table(title=title)
    n = result["n"]
    for col in ("attack", "budget", "attacked", "broken", "robust after", "95% CI", "seconds", "fwd/bwd passes"):
        table.add_column(col, justify="left" if col in ("attack", "budget") else "right")
    for row in result["attacks"]:
        table.add_row(terminal_text(attack_label(row)), terminal_text(_attack_budget(row)), str(row["attacked"]),
                      str(row["broken"]), _pct(row["robust_accuracy_after"]), _ci(row, "robust_accuracy_after", n),
                      f"{row['seconds']:.1f}", f"{row['forward_passes']}/{row['backward_passes']}")
    table.add_section()
    table.add_row("[bold]clean[/]", "", "", "", _pct(result["clean_accuracy"]), _ci(result, "clean_accuracy", n),
                  "", "")
    robust = _pct(result["robust_accuracy"]) if valid else f"[red]{status} ({_pct(result['robust_accuracy'])})[/]"
    table.add_row("[bold]worst case[/]", "per example, over all attacks", "", "", robust,
                  _ci(result, "robust_accuracy", n), f"{result['seconds']:.1f}",
                  f"{result['forward_passes']}/{result['backward_passes']}")
    if result.get("paper_protocol_accuracy") is not None:
        table.add_row("paper protocol", "", "", "", _pct(result["paper_protocol_accuracy"]),
                      _ci(result, "paper_protocol_accuracy", n), "", "")
        table.add_row("overestimation", "paper - worst case", "", "", _pct(result["overestimation"]), "", "", "")
    checks = Table(title="sanity checks (details in results.md)")
    checks.add_column("check", no_wrap=True)
    checks.add_column("result", no_wrap=True)
    for check in result.get("checks", []):
        mark = {True: "[green]pass[/]", False: "[red]FAIL[/]" if check["gating"] else "[yellow]warn[/]",
                None: "[dim]n/a[/]"}[check["passed"]]
        checks.add_row(terminal_text(check["name"]), mark)
    return Group(table, checks) if result.get("checks") else Group(table)


def attack_markdown(result: dict[str, Any]) -> str:
    tm = result["threat_model"]
    lines = [f"# {result['model']['name']}: {result['suite']['name']}", ""]
    status = verdict(result)
    if status == "UNCHECKED":
        lines += ["**UNCHECKED**: no sanity check ran (--checks none); the number below is not a verdict", ""]
    elif status == "INVALID":
        lines += ["**INVALID**: " + "; ".join(result["invalid_reasons"]), ""]
    lines += [
        f"Threat model: {threat_model_text(tm)} in {tm['eps_units']}; first {result['n']} test images "
        f"({100 * result['data']['lossless_fraction']:.1f}% lossless); policy {result['policy']}; seed "
        f"{result['seed']}; device {result['device']}.",
        "",
        "| attack | budget | attacked | broken | robust after | 95% CI | seconds | forward / backward passes |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    n = result["n"]
    for row in result["attacks"]:
        lines.append(f"| {attack_label(row)} | {_attack_budget(row)} | {row['attacked']} | {row['broken']} | "
                     f"{_pct(row['robust_accuracy_after'])} | {_ci(row, 'robust_accuracy_after', n)} | "
                     f"{row['seconds']:.1f} | {row['forward_passes']} / {row['backward_passes']} |")
    lines += ["", f"- clean accuracy: {_pct(result['clean_accuracy'])} {_ci(result, 'clean_accuracy', n)}",
              f"- robust accuracy (worst case per example over the suite): {_pct(result['robust_accuracy'])} "
              f"{_ci(result, 'robust_accuracy', n)}" + ("" if status == "valid" else f" — {status}")]
    if result.get("paper_protocol_accuracy") is not None:
        lines += [f"- paper protocol accuracy: {_pct(result['paper_protocol_accuracy'])} "
                  f"{_ci(result, 'paper_protocol_accuracy', n)}; overestimation {_pct(result['overestimation'])}"]
    lines += [f"- [lo, hi]: 95% Clopper-Pearson intervals over the {n} points (binomial sampling error only)"]
    timing = result.get("timing") or {}
    if timing:
        lines += [f"- time (this process): {timing['total_seconds']:.1f} s = clean pass and set-up "
                  f"{timing['clean_and_setup_seconds']:.1f} s + attacks {timing['attack_seconds']:.1f} s + checks "
                  f"{timing['checks_seconds']:.1f} s ({timing['checks_forward_passes']} forward / "
                  f"{timing['checks_backward_passes']} backward passes); model and data loading not included"]
    if result.get("checks"):
        lines += ["", "| check | result | seconds | detail |", "|---|---|---:|---|"]
        for c in result["checks"]:
            status = {True: "pass", False: "FAIL" if c["gating"] else "warning", None: "not run"}[c["passed"]]
            lines.append(f"| {c['name']} | {status}{' (gating)' if c['gating'] else ''} | "
                         f"{c.get('seconds', 0.0):.1f} | {c['detail']} |")
    lines += ["", f"- weights: `{result['model'].get('weights')}`", f"- command: `{result['command']}`",
              f"- versions: torch {result['versions']['torch']}, torchattacks {result['versions']['torchattacks']}, "
              f"robust-uatt {result['versions']['robust_uatt']} ({result['versions']['git_commit']})", ""]
    return "\n".join(lines)


def zoo_table(rows: list[dict[str, Any]]) -> Table:
    table = Table(title="robust-uatt model zoo")
    for col in ("name", "dataset", "params", "presets", "description"):
        table.add_column(col, justify="right" if col == "params" else "left", overflow="fold",
                         no_wrap=col in ("name", "dataset", "params"))
    for r in rows:
        table.add_row(terminal_text(r["name"]), r["dataset"], f"{r['params'] / 1e6:.2f}M",
                      terminal_text(", ".join(r["presets"])), terminal_text(r["description"]))
    return table


def curve_table(curve: dict[str, Any]) -> Table:
    """Accuracy against eps: the monotone curve with its 95% interval beside the raw per-eps values; the verdict of
    the sanity checks in the title, the clean accuracy in the caption."""
    n = curve["n"]
    title = terminal_text(f"{curve['model']['name']}: accuracy vs eps ({curve['suite']}, n={n}, policy "
                          f"{curve.get('policy', 'mean')}, checks {curve.get('checks_level', 'none')})")
    if curve.get("valid") is False:
        title += "  [bold red]INVALID[/]: " + terminal_text("; ".join(curve.get("invalid_reasons", [])))
    table = Table(title=title)
    for col in ("eps", "robust (monotone)", "95% CI", "raw"):
        table.add_column(col, justify="right")
    cis = curve.get("robust_accuracy_ci") or [interval(r, n) for r in curve["robust_accuracy"]]
    rows = zip(curve["eps_text"], curve["eps"], curve["robust_accuracy"], cis, curve["raw_robust_accuracy"])
    for text, e, r, ci, raw in sorted(rows, key=lambda t: t[1]):
        table.add_row(terminal_text(f"{text} ({e:.4g})"), f"{100 * r:.2f}%", format_ci(ci), f"{100 * raw:.2f}%")
    clean_ci = curve.get("clean_accuracy_ci") or interval(curve.get("clean_accuracy"), n)
    table.caption = (f"clean {pct_ci(curve.get('clean_accuracy'), clean_ci)}; [lo, hi]: 95% Clopper-Pearson "
                     f"intervals over the {n} points")
    return table


def selftest_table(results: dict[str, dict[str, Any]]) -> tuple[Table, bool]:
    """One row per planted model (clean, naive PGD, worst case, verdict, the gating checks that failed, the symptom
    expected); also whether every plant was caught and the undefended model passed."""
    table = Table(title="selftest: gradient-masking tricks on a small CIFAR-10 CNN, L-inf 8/255")
    for col in ("model", "clean", "naive PGD", "worst case", "verdict", "failed gating checks", "expected", "ok"):
        table.add_column(col, justify="right" if col in ("clean", "naive PGD", "worst case") else "left")
    ok = True
    for name, r in results.items():
        good = not r["caught"] if name == "undefended model" else r["caught"]
        ok &= good
        table.add_row(name, _pct(r["clean"]), _pct(r["naive"]), _pct(r["worst_case"]), r["verdict"],
                      ", ".join(r["failed"]) or "-", ", ".join(r["expected"]) or "valid",
                      "[green]yes[/]" if good else "[red]NO[/]")
    return table, ok
