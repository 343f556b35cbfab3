"""Command line: parse arguments, call the modules, map user mistakes to one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import NoReturn

from robust_uatt.utils.errors import UserError, environment_error
from robust_uatt.utils.files import check_writable

EXIT_USER_ERROR = 2


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line on stderr (exit 2), like every other user error."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"robust-uatt: error: {message} (see {self.prog} --help)\n")
        raise SystemExit(EXIT_USER_ERROR)


def _timestamp() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")


def _positive_int(name: str, value: int | None) -> None:
    if value is not None and value <= 0:
        raise UserError(f"--{name} must be a positive integer, got {value}")


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"must lie in 0..{2**32 - 1}, got {value}")
    return value


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", default=None,
                   help="folder with the datasets (npz or torchvision layouts); default: $ROBUST_UATT_DATA")
    p.add_argument("--no-download", action="store_true", help="never try torchvision's download")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    p.add_argument("--seed", type=_seed, default=0, help="random seed, 0..2^32-1")
    p.add_argument("--runs-dir", default=os.environ.get("ROBUST_UATT_RUNS", "runs"),
                   help="where runs are written and zoo names are looked up (default: runs, or $ROBUST_UATT_RUNS)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="robust-uatt", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    sub.add_parser("zoo", help="list the model zoo")

    p = sub.add_parser("train", help="train a zoo model")
    p.add_argument("model", nargs="?", help="zoo name (see `robust-uatt zoo`) or a recipe .toml file")
    p.add_argument("--preset", default=None, help="recipe preset, e.g. smoke or cpu")
    p.add_argument("--epochs", type=int, default=None, help="override the recipe's epochs")
    p.add_argument("--out", default=None, help="run directory (default: RUNS/<model>/<timestamp>)")
    p.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue an interrupted run")
    p.add_argument("--deterministic", action="store_true",
                   help="deterministic algorithms on CUDA too (slower; always on for the CPU)")
    _add_common(p)

    p = sub.add_parser("attack", help="attack a model with one attack or a suite; worst case per example")
    p.add_argument("--model", default=None, help="zoo name (newest finished run), run directory or .safetensors")
    p.add_argument("--model-factory", default=None, metavar="MODULE:FUNCTION",
                   help="your own nn.Module (maps [0,1] images to logits); weights from --checkpoint")
    p.add_argument("--checkpoint", default=None, help="safetensors state dict for --model-factory")
    p.add_argument("--robustbench", default=None, metavar="NAME", help="a RobustBench model from --model-dir")
    p.add_argument("--model-dir", default="models", help="RobustBench model directory (offline)")
    p.add_argument("--dataset", default="cifar10", help="dataset for --model-factory / --robustbench")
    p.add_argument("--attack", default="pgd", help="one attack (see robust_uatt.attacks.ATTACKS), e.g. pgd, pgd-eq14")
    p.add_argument("--suite", default=None, help="a suite from attacks/<name>.toml: paper, quick, standard, adaptive")
    p.add_argument("--eps", default="8/255", help="Linf radius in [0,1] pixel units: 0.3, 8/255, ...")
    p.add_argument("--steps", type=int, default=None, help="iterations (queries/draws) of a single --attack")
    p.add_argument("--alpha", default=None, help="step size (default 2.5*eps/steps)")
    p.add_argument("--eot", type=int, default=None, help="EOT samples per step (default 8 with --policy sample)")
    p.add_argument("--policy", default="mean", help="attention models: mean (deterministic) or sample")
    p.add_argument("--source", default=None, help="add a transfer attack made on this model (zoo name/run/file)")
    p.add_argument("--option", action="append", metavar="KEY=VALUE",
                   help="attack option, e.g. grad_path=full, tau=0.1, restarts=3 (repeatable)")
    p.add_argument("--checks", default="fast", help="sanity checks: none, fast (default) or full")
    p.add_argument("--no-cascade", action="store_true", help="run every attack on every clean-correct point")
    p.add_argument("--n", type=int, default=1000, help="attack the first n test images")
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--out", default=None, help="output directory (default: RUNS/attacks/<model>/<timestamp>-<suite>)")
    _add_common(p)

    p = sub.add_parser("curve", help="security curve: robust accuracy against eps (JSON + PNG)")
    p.add_argument("--model", required=True, help="zoo name (newest finished run), run directory or .safetensors")
    p.add_argument("--eps", required=True, help="comma-separated radii, e.g. 0,1/255,2/255,4/255,8/255,16/255,0.1,0.3")
    p.add_argument("--attack", default="pgd-ce", help="attack at every eps (default pgd-ce)")
    p.add_argument("--suite", default=None, help="or a suite at every eps")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--out", default=None, help="output directory (default: RUNS/curves/<model>/<timestamp>)")
    _add_common(p)

    p = sub.add_parser("selftest", help="plant broken models and show that the sanity checks catch each one")
    p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser("glimpses", help="draw where an attention model looks (top-down region, numbered glimpses)")
    p.add_argument("--model", required=True, help="zoo name (newest finished run), run directory or .safetensors")
    p.add_argument("--n", type=int, default=8, help="the first n test images")
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument("--policy", default="mean", help="mean (deterministic) or sample")
    _add_common(p)

    p = sub.add_parser("compare", help="our attack results beside RobustBench rows of the same threat model")
    p.add_argument("--model", action="append", required=True,
                   help="results.json, a folder holding it, or a zoo name (all RUNS/attacks/<name>/*/results.json); "
                        "repeatable")
    p.add_argument("--leaderboard", default=None, metavar="DIR",
                   help="RobustBench model_info/ tree or <dataset>_<Linf|L2|corruptions>.csv files "
                        "(default: $ROBUST_UATT_DATA/robustbench)")
    p.add_argument("--top", type=int, default=10, help="leaderboard rows shown besides Standard and ResNet-18s")
    p.add_argument("--out", default=None, help="JSON file to write (default: RUNS/compare/<timestamp>.json)")
    p.add_argument("--runs-dir", default=os.environ.get("ROBUST_UATT_RUNS", "runs"),
                   help="where zoo names are looked up and the JSON goes (default: runs, or $ROBUST_UATT_RUNS)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        commands = {"zoo": cmd_zoo, "train": cmd_train, "attack": cmd_attack, "glimpses": cmd_glimpses,
                    "selftest": cmd_selftest, "curve": cmd_curve, "compare": cmd_compare}
        return commands[args.command](args)
    except UserError as e:
        sys.stderr.write(f"robust-uatt: error: {_one_line(str(e))}\n")
        return EXIT_USER_ERROR
    except OSError as e:  # full disk, read-only or vanished folder: the environment, not a bug
        message = environment_error(e)
        if message is None:
            raise
        sys.stderr.write(f"robust-uatt: error: {_one_line(message)}\n")
        return EXIT_USER_ERROR
    except KeyboardInterrupt as e:  # 128 + the signal number, as a shell reports it (130 for Ctrl-C)
        return 128 + int(getattr(e, "signum", 2))


def _one_line(text: str) -> str:
    """A message that quotes user input (which may hold newlines) still prints as one line."""
    return " ".join(text.splitlines()) if len(text.splitlines()) > 1 else text


def cmd_zoo(args: argparse.Namespace) -> int:
    from rich.console import Console

    from robust_uatt.viz.tables import zoo_table
    from robust_uatt.models.zoo import count_params, create_model, load_recipe, recipe_names

    rows = []
    for name in recipe_names():
        recipe = load_recipe(name)
        rows.append({"name": name, "dataset": recipe.dataset, "params": count_params(create_model(recipe)),
                     "presets": recipe.presets, "description": recipe.description})
    Console().print(zoo_table(rows))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from rich.console import Console

    from robust_uatt.utils.files import RunLock, read_json
    from robust_uatt.utils.runtime import resolve_device
    from robust_uatt.training.loop import CHECKPOINT, CONFIG, WEIGHTS, TrainingDiverged, train
    from robust_uatt.models.zoo import Recipe, load_recipe

    _positive_int("epochs", args.epochs)
    device = resolve_device(args.device)
    if args.resume:
        run_dir = Path(args.resume)
        if not run_dir.is_dir():
            raise UserError(f"{run_dir}: no such run directory")
        RunLock(run_dir).check_free()  # "in use by process N" beats any other complaint about a live run
        if not (run_dir / CHECKPOINT).is_file():
            raise UserError(f"{run_dir}: nothing to resume (no {CHECKPOINT})")
        if (run_dir / WEIGHTS).is_file():
            raise UserError(f"{run_dir}: this run has already finished")
        config = read_json(run_dir / CONFIG)
        if not (isinstance(config, dict) and isinstance(config.get("recipe"), dict)
                and isinstance(config.get("seed"), int) and not isinstance(config.get("seed"), bool)):
            raise UserError(f"{run_dir / CONFIG}: not a robust-uatt run configuration (needs 'recipe' and 'seed')")
        recipe = Recipe.from_dict(config["recipe"], where=str(run_dir / CONFIG))
        if args.model and args.model != recipe.name:
            raise UserError(f"{run_dir} is a run of {recipe.name}, not {args.model}")
        saved_dir = config.get("data_dir")
        seed, data_dir = config["seed"], args.data_dir or (saved_dir if isinstance(saved_dir, str) else None)
    else:
        if not args.model:
            raise UserError("name a zoo model to train (see `robust-uatt zoo`), or --resume RUN_DIR")
        recipe = load_recipe(args.model, args.preset)
        if args.epochs:
            recipe.train["epochs"] = args.epochs
        seed, data_dir = args.seed, args.data_dir
        run_dir = Path(args.out) if args.out else Path(args.runs_dir) / recipe.name / _timestamp()
        if run_dir.is_dir():
            RunLock(run_dir).check_free()
        if (run_dir / CHECKPOINT).exists() or (run_dir / WEIGHTS).exists():
            raise UserError(f"{run_dir} already holds a run: use --resume {run_dir}, or another --out")
        check_writable(run_dir)
    try:
        train(recipe, run_dir, seed=seed, device=device, data_dir=data_dir, resume=bool(args.resume),
              download=not args.no_download, console=Console(stderr=True),
              deterministic=True if args.deterministic else None)
    except TrainingDiverged as e:
        sys.stderr.write(f"robust-uatt: training diverged: {e}\n")
        return 3
    except OSError as e:
        message = environment_error(e)
        if message is None:
            raise
        if (run_dir / CHECKPOINT).is_file():
            message += f"; the last checkpoint is intact: robust-uatt train --resume {shlex.quote(str(run_dir))}"
        raise UserError(message) from e
    print(run_dir)
    return 0


def cmd_attack(args: argparse.Namespace) -> int:
    from robust_uatt.evaluation.runner import run

    return run(args)


def cmd_curve(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from robust_uatt.attacks import ATTACKS
    from robust_uatt.evaluation.curve import plot_curve, security_curve
    from robust_uatt.data.datasets import load_split
    from robust_uatt.utils.errors import unknown_name
    from robust_uatt.evaluation.harness import parse_eps
    from robust_uatt.utils.files import write_json
    from robust_uatt.utils.runtime import configure, resolve_device, seed_all, versions
    from robust_uatt.evaluation.suites import Suite, SuiteEntry, load_suite
    from robust_uatt.models.zoo import load_trained

    eps_list = [parse_eps(e) for e in args.eps.split(",")]
    _positive_int("n", args.n)
    _positive_int("batch-size", args.batch_size)
    _positive_int("steps", args.steps)
    if args.suite:
        suite = load_suite(args.suite)
    elif args.attack not in ATTACKS:
        raise unknown_name("attack", args.attack, ATTACKS)
    else:
        suite = Suite(args.attack, ATTACKS[args.attack].description, [SuiteEntry(args.attack, args.steps)])
    device = resolve_device(args.device)
    model, recipe, weights = load_trained(args.model, args.runs_dir)
    test = load_split(recipe.dataset, "test", args.data_dir, not args.no_download, recipe.data)
    data = test.subset(slice(0, min(args.n, len(test))))
    out = Path(args.out) if args.out else Path(args.runs_dir) / "curves" / recipe.name / _timestamp()
    if (out / "curve.json").exists():
        raise UserError(f"{out}/curve.json exists; choose another --out")
    check_writable(out)
    configure(device)
    seed_all(args.seed)
    curve = security_curve(model.to(device).eval(), suite, data, eps_list, batch_size=args.batch_size,
                           device=device, seed=args.seed, console=Console(stderr=True))
    result = {"model": {"name": recipe.name, "weights": str(weights)}, "suite": suite.name, "n": len(data),
              "eps_units": "pixel [0,1]", "eps_text": args.eps.split(","), **curve, "seed": args.seed,
              "device": str(device), "versions": versions(),
              "command": "robust-uatt " + " ".join(shlex.quote(a) for a in sys.argv[1:])}
    write_json(out / "curve.json", result)
    plot_curve(curve, out / "curve.png", f"{recipe.name}: {suite.name}, first {len(data)} test images")
    table = Table(title=f"{recipe.name}: accuracy vs eps ({suite.name}, n={len(data)})")
    for col in ("eps", "robust (monotone)", "raw"):
        table.add_column(col, justify="right")
    for text, e, r, raw in sorted(zip(result["eps_text"], eps_list, curve["robust_accuracy"],
                                      curve["raw_robust_accuracy"]), key=lambda t: t[1]):
        table.add_row(f"{text} ({e:.4g})", f"{100 * r:.2f}%", f"{100 * raw:.2f}%")
    Console().print(table)
    print(out / "curve.json")
    return 0


def cmd_selftest(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from robust_uatt.evaluation.selftest import run_selftest

    results = run_selftest(args.seed)
    table = Table(title="selftest: do the sanity checks catch planted failures?")
    for col in ("model", "expected", "verdict", "failed gating checks"):
        table.add_column(col)
    ok = True
    for name, r in results.items():
        expected = "valid" if name == "healthy model" else "INVALID"
        verdict = "INVALID" if r["caught"] else "valid"
        ok &= verdict == expected
        table.add_row(name, expected, ("[green]" if verdict == expected else "[red]") + verdict + "[/]",
                      ", ".join(r["failed"]) or "-")
    Console().print(table)
    caught = sum(r["caught"] for n, r in results.items() if n != "healthy model")
    print(f"caught {caught} of {len(results) - 1} broken models; healthy model "
          f"{'passes' if not results['healthy model']['caught'] else 'FAILS'}")
    return 0 if ok else 1


def cmd_glimpses(args: argparse.Namespace) -> int:
    import torch

    from robust_uatt.data.datasets import load_split, to_float
    from robust_uatt.viz.glimpses import plot_glimpses
    from robust_uatt.utils.runtime import resolve_device, seed_all
    from robust_uatt.models.zoo import load_trained

    _positive_int("n", args.n)
    if not args.out.lower().endswith(".png"):
        raise UserError(f"--out must name a .png file, got {args.out}")
    device = resolve_device(args.device)
    model, recipe, _ = load_trained(args.model, args.runs_dir)
    if not hasattr(model, "trace"):
        raise UserError(f"{recipe.name} is not an attention model (arch {recipe.model['arch']}): nothing to draw")
    model.policy = args.policy
    test = load_split(recipe.dataset, "test", args.data_dir, not args.no_download, recipe.data)
    data = test.subset(slice(0, min(args.n, len(test))))
    check_writable(Path(args.out).parent)
    seed_all(args.seed)
    model = model.to(device)
    x = to_float(data.x.to(device))
    with torch.inference_mode():
        trace = model.trace(x)
        preds = model(x).argmax(1).cpu()
    trace = {k: (v.cpu() if torch.is_tensor(v) else v) for k, v in trace.items()}
    plot_glimpses(x.cpu(), trace, args.out, labels=data.y, preds=preds,
                  title=f"{recipe.name} ({args.policy} policy), first {len(data)} test images")
    print(args.out)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from rich.console import Console

    from robust_uatt.benchmark.compare import compare, default_leaderboard, load_results, read_leaderboard, report_tables
    from robust_uatt.utils.files import write_json

    if args.top < 0:
        raise UserError(f"--top must be 0 or more, got {args.top}")
    source = Path(args.leaderboard) if args.leaderboard else default_leaderboard()
    rows = read_leaderboard(source)
    ours = load_results(args.model, args.runs_dir)
    report = compare(ours, rows, top=args.top, source=str(source))
    out = Path(args.out) if args.out else Path(args.runs_dir) / "compare" / f"{_timestamp()}.json"
    check_writable(out.parent)
    write_json(out, report.to_json())
    console = Console()
    for table in report_tables(report):
        console.print(table)
    print(out)
    return 0
