"""``robust-uatt attack``: load the model and data, build the attacks, run the cascade and the sanity checks, write
results.json + results.md, print the table. Returns the exit code: 0 valid, 4 INVALID (a gating check failed)."""

from __future__ import annotations

import argparse
import importlib
import shlex
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch import nn

from robust_uatt.attacks import ATTACKS, build_attack
from robust_uatt.evaluation.checks import as_dicts, check_budget, check_model, check_run, gate
from robust_uatt.data.datasets import DATASETS, load_split
from robust_uatt.utils.errors import UserError
from robust_uatt.evaluation.harness import parse_eps, run_suite, summarize
from robust_uatt.utils.files import RunLock, atomic_write_text, check_writable, load_state_into, load_tensors, write_json
from robust_uatt.viz.tables import attack_markdown, attack_table
from robust_uatt.utils.runtime import configure, resolve_device, seed_all, versions
from robust_uatt.evaluation.suites import Suite, SuiteEntry, load_suite
from robust_uatt.models.zoo import load_trained

EXIT_INVALID = 4


def _parse_options(pairs: list[str]) -> dict[str, Any]:
    """--option key=value (value as TOML scalar: 0.1, 3, true, "text" or bare text)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UserError(f"--option expects key=value, got '{pair}'")
        try:
            import tomllib

            out[key] = tomllib.loads(f"v = {value}")["v"]
        except Exception:  # not a TOML scalar: keep the text
            out[key] = value
    return out


def load_model(args: argparse.Namespace) -> tuple[nn.Module, dict[str, Any], str, dict]:
    """(model, model info for the results, dataset name, recipe [data] params) from --model / --model-factory /
    --robustbench."""
    chosen = [bool(args.model), bool(args.model_factory), bool(args.robustbench)]
    if sum(chosen) != 1:
        raise UserError("name exactly one of --model, --model-factory (with --checkpoint) or --robustbench")
    if args.model:
        model, recipe, weights = load_trained(args.model, args.runs_dir)
        return model, {"name": recipe.name, "spec": args.model, "weights": str(weights), "kind": "robust-uatt",
                       "preset": recipe.preset, "recipe": recipe.to_dict()}, recipe.dataset, recipe.data
    dataset = args.dataset
    if dataset not in DATASETS:
        from robust_uatt.utils.errors import unknown_name

        raise unknown_name("dataset", dataset, DATASETS)
    if args.model_factory:
        module_name, sep, func = args.model_factory.partition(":")
        if not sep:
            raise UserError(f"--model-factory expects module:function, got '{args.model_factory}'")
        try:
            factory = getattr(importlib.import_module(module_name), func)
        except (ImportError, AttributeError) as e:
            raise UserError(f"cannot import {args.model_factory}: {e}") from None
        model = factory()
        if not isinstance(model, nn.Module):
            raise UserError(f"{args.model_factory} returned {type(model).__name__}, not an nn.Module")
        if args.checkpoint:
            tensors, _ = load_tensors(args.checkpoint)
            load_state_into(model, tensors, args.checkpoint)
        return model.eval(), {"name": args.model_factory, "weights": args.checkpoint, "kind": "factory"}, dataset, {}
    from robust_uatt.benchmark.robustbench_models import load_robustbench_model

    model = load_robustbench_model(args.robustbench, args.model_dir, dataset=dataset, threat_model="Linf")
    return model.eval(), {"name": args.robustbench, "weights": args.model_dir, "kind": "robustbench"}, dataset, {}


def suite_from_args(args: argparse.Namespace) -> Suite:
    if args.suite:
        suite = load_suite(args.suite)
        if args.steps:
            raise UserError("--steps applies to a single --attack; a suite sets each attack's steps")
    else:
        if args.attack not in ATTACKS:
            from robust_uatt.utils.errors import unknown_name

            raise unknown_name("attack", args.attack, ATTACKS)
        suite = Suite(args.attack, ATTACKS[args.attack].description,
                      [SuiteEntry(args.attack, args.steps, None, "paper" if args.attack == "pgd-eq14" else "")])
    if args.source:
        suite.entries.append(SuiteEntry("transfer", None, None, "", {"source": args.source}))
    if len(suite.entries) > 1 and any(not ATTACKS[e.name].bounded for e in suite.entries):
        raise UserError("unbounded attacks (cw) measure minimal perturbations; run them alone, not in a suite")
    return suite


def run(args: argparse.Namespace) -> int:
    for name in ("n", "batch_size", "steps", "eot"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise UserError(f"--{name.replace('_', '-')} must be a positive integer, got {value}")
    eps = parse_eps(args.eps)
    alpha = parse_eps(args.alpha) if args.alpha is not None else None
    if args.policy not in ("mean", "sample"):
        raise UserError(f"--policy must be mean or sample, got '{args.policy}'")
    if args.checks not in ("none", "fast", "full"):
        raise UserError(f"--checks must be none, fast or full, got '{args.checks}'")
    suite = suite_from_args(args)
    extra = _parse_options(args.option or [])
    device = resolve_device(args.device)
    model, model_info, dataset, data_params = load_model(args)
    stochastic = args.policy == "sample"
    if hasattr(model, "policy"):
        model.policy = args.policy
    elif stochastic:
        raise UserError(f"--policy sample applies to attention models; {model_info['name']} has no policy")
    eot = args.eot or (8 if stochastic else 1)
    test = load_split(dataset, "test", args.data_dir, not args.no_download, data_params)
    if args.n > len(test):
        raise UserError(f"--n {args.n} exceeds the {len(test)} test images of {dataset}")
    data = test.subset(slice(0, args.n))
    num_classes = DATASETS[dataset].num_classes

    attacks = []
    for entry in suite.entries:
        options = {**entry.options, **{k: v for k, v in extra.items() if k in ATTACKS[entry.name].options}}
        if entry.name == "transfer":
            source, _, _ = load_trained(options["source"], args.runs_dir)
            options["source_model"] = source.to(device).eval().requires_grad_(False)
        if entry.name == "autoattack":
            options["n_classes"] = num_classes
        attacks.append(build_attack(entry.name, eps=eps, alpha=alpha, steps=entry.steps, seed=args.seed,
                                    eot=entry.eot or eot, options=options))
    unused = set(extra) - {k for e in suite.entries for k in ATTACKS[e.name].options}
    if unused:
        raise UserError(f"--option {sorted(unused)[0]} is not an option of any attack in the run")

    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    out = Path(args.out) if args.out else Path(args.runs_dir) / "attacks" / model_info["name"].replace(":", "_") / \
        f"{stamp}-{suite.name}"
    if (out / "results.json").exists():
        raise UserError(f"{out}/results.json exists; choose another --out")
    check_writable(out)
    out.mkdir(parents=True, exist_ok=True)
    with RunLock(out):  # one writer per output directory; a restart after a kill resumes from state.json
        return _run_locked(args, model, model_info, dataset, data, suite, attacks, eps, eot, stochastic,
                           num_classes, device, out)


def _run_locked(args: argparse.Namespace, model: nn.Module, model_info: dict[str, Any], dataset: str, data: Any,
                suite: Suite, attacks: list, eps: float, eot: int, stochastic: bool, num_classes: int,
                device: torch.device, out: Path) -> int:
    configure(device)
    seed_all(args.seed)
    model = model.to(device).eval()
    console = Console(stderr=True)
    config = {"model": {k: v for k, v in model_info.items() if k != "recipe"}, "eps": eps, "seed": args.seed,
              "policy": args.policy, "n": args.n, "dataset": dataset}
    outcome = run_suite(model, attacks, data, batch_size=args.batch_size, device=device, cascade=not args.no_cascade,
                        uncascaded=frozenset({suite.paper_attack} - {None}), state_path=out / "state.json",
                        config=config, console=console)
    checks = []
    if args.checks != "none":
        checks += check_model(model, data, outcome.clean_correct, num_classes=num_classes, device=device,
                              seed=args.seed, stochastic=stochastic)
        checks += check_run(outcome, [a.describe() for a in attacks])
        if args.checks == "full":
            pgd_steps = max((a.budget.steps for a in attacks if a.white_box and a.steps_meaning == "iterations"),
                            default=20)
            checks += check_budget(model, data, outcome, eps=eps, steps=pgd_steps, eot=eot, device=device,
                                   seed=args.seed)
    valid, reasons = gate(checks)
    summary = summarize(outcome, suite.paper_attack)
    bounded = all(a.bounded for a in attacks)
    broken_by = [""] * len(data)
    for a, rec in zip(attacks, outcome.records):
        for i in rec.broken:
            broken_by[i] = broken_by[i] or a.name
    result: dict[str, Any] = {
        "schema": "robust-uatt/results/1",
        "model": model_info,
        "suite": {"name": suite.name, "description": suite.description},
        "attack": suite.name,
        "threat_model": {"norm": attacks[0].norm if len(attacks) == 1 else "Linf", "bounded": bounded,
                         "eps": eps if bounded else None, "eps_text": args.eps, "eps_units": "pixel [0,1]",
                         "steps": attacks[0].budget.steps, "steps_meaning": attacks[0].steps_meaning,
                         "alpha": attacks[0].budget.alpha},
        "policy": args.policy, "eot": eot, "cascade": not args.no_cascade,
        **summary,
        "valid": valid, "invalid_reasons": reasons, "checks": as_dicts(checks), "checks_level": args.checks,
        "data": {"dataset": dataset, "source": data.source, "first_n": args.n,
                 "lossless_fraction": data.lossless_fraction()},
        "seed": args.seed, "device": str(device), "batch_size": args.batch_size,
        "command": "robust-uatt " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        "versions": versions(),
        "per_example": {"clean_correct": outcome.clean_correct.int().tolist(),
                        "robust_correct": outcome.robust_correct().int().tolist(), "broken_by": broken_by},
    }
    write_json(out / "results.json", result)
    atomic_write_text(out / "results.md", attack_markdown(result))
    Console().print(attack_table(result))
    print(out / "results.json")
    return 0 if valid else EXIT_INVALID


__all__ = ["run", "EXIT_INVALID"]
