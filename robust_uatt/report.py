"""What a person reads: rich tables on the terminal, Markdown next to results.json."""

from __future__ import annotations

from typing import Any

from rich.table import Table


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def attack_table(result: dict[str, Any]) -> Table:
    tm = result["threat_model"]
    table = Table(title=f"{result['model']['name']} under {result['attack']}")
    for col in ("model", "attack", "threat model", "n", "clean", "robust", "seconds"):
        table.add_column(col, justify="right" if col in ("n", "clean", "robust", "seconds") else "left")
    table.add_row(result["model"]["name"], result["attack"], threat_model_text(tm), str(result["n"]),
                  _pct(result["clean_accuracy"]), _pct(result["robust_accuracy"]), f"{result['seconds']:.1f}")
    return table


def threat_model_text(tm: dict[str, Any]) -> str:
    if not tm["bounded"]:
        return f"{tm['norm']} minimal (unbounded), {tm['steps']} {tm['steps_meaning']}"
    return f"{tm['norm']} eps={tm['eps_text']} ({tm['eps']:.4g}), {tm['steps']} {tm['steps_meaning']}"


def attack_markdown(result: dict[str, Any]) -> str:
    tm = result["threat_model"]
    lines = [
        f"# {result['model']['name']}: {result['attack']}",
        "",
        "| model | attack | threat model | n | clean | robust | seconds |",
        "|---|---|---|---:|---:|---:|---:|",
        f"| {result['model']['name']} | {result['attack']} | {threat_model_text(tm)} | {result['n']} | "
        f"{_pct(result['clean_accuracy'])} | {_pct(result['robust_accuracy'])} | {result['seconds']:.1f} |",
        "",
        f"- weights: `{result['model']['weights']}`",
        f"- data: {result['data']['source']} (first {result['n']} test images, "
        f"{100 * result['data']['lossless_fraction']:.1f}% lossless)",
        f"- eps in {tm['eps_units']}; alpha {tm['alpha']:.4g}; seed {result['seed']}; device {result['device']}",
        f"- largest perturbation: Linf {result['max_linf']:.4g}, L2 {result['max_l2']:.4g}",
        f"- command: `{result['command']}`",
        f"- versions: torch {result['versions']['torch']}, torchattacks {result['versions']['torchattacks']}, "
        f"robust-uatt {result['versions']['robust_uatt']} ({result['versions']['git_commit']})",
        "",
    ]
    return "\n".join(lines)


def zoo_table(rows: list[dict[str, Any]]) -> Table:
    table = Table(title="robust-uatt model zoo")
    for col in ("name", "dataset", "params", "presets", "description"):
        table.add_column(col, justify="right" if col == "params" else "left", overflow="fold",
                         no_wrap=col in ("name", "dataset", "params"))
    for r in rows:
        table.add_row(r["name"], r["dataset"], f"{r['params'] / 1e6:.2f}M", ", ".join(r["presets"]), r["description"])
    return table
