"""Command line: parse arguments, call the modules, map user mistakes to one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NoReturn

from robust_uatt.errors import UserError

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


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", default=None,
                   help="folder with the datasets (npz or torchvision layouts); default: $ROBUST_UATT_DATA")
    p.add_argument("--no-download", action="store_true", help="never try torchvision's download")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    p.add_argument("--seed", type=int, default=0)
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
    _add_common(p)

    p = sub.add_parser("attack", help="attack a trained model")
    p.add_argument("--model", required=True, help="zoo name (newest finished run), run directory or .safetensors")
    p.add_argument("--attack", default="pgd", help="pgd, fgsm, apgd-ce, cw or square")
    p.add_argument("--eps", default="8/255", help="Linf radius in [0,1] pixel units: 0.3, 8/255, ...")
    p.add_argument("--steps", type=int, default=None, help="iterations (queries for square); default per attack")
    p.add_argument("--alpha", default=None, help="step size (default 2.5*eps/steps)")
    p.add_argument("--n", type=int, default=1000, help="attack the first n test images")
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--out", default=None, help="output directory (default: RUNS/attacks/<model>/<timestamp>-<attack>)")
    _add_common(p)

    p = sub.add_parser("glimpses", help="draw where an attention model looks (top-down region, numbered glimpses)")
    p.add_argument("--model", required=True, help="zoo name (newest finished run), run directory or .safetensors")
    p.add_argument("--n", type=int, default=8, help="the first n test images")
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument("--policy", default="mean", help="mean (deterministic) or sample")
    _add_common(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        commands = {"zoo": cmd_zoo, "train": cmd_train, "attack": cmd_attack, "glimpses": cmd_glimpses}
        return commands[args.command](args)
    except UserError as e:
        sys.stderr.write(f"robust-uatt: error: {e}\n")
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        return 130


def cmd_zoo(args: argparse.Namespace) -> int:
    from rich.console import Console

    from robust_uatt.report import zoo_table
    from robust_uatt.zoo import count_params, create_model, load_recipe, recipe_names

    rows = []
    for name in recipe_names():
        recipe = load_recipe(name)
        rows.append({"name": name, "dataset": recipe.dataset, "params": count_params(create_model(recipe)),
                     "presets": recipe.presets, "description": recipe.description})
    Console().print(zoo_table(rows))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from rich.console import Console

    from robust_uatt.io import read_json
    from robust_uatt.runtime import resolve_device
    from robust_uatt.train import CONFIG, TrainingDiverged, train
    from robust_uatt.zoo import Recipe, load_recipe

    _positive_int("epochs", args.epochs)
    device = resolve_device(args.device)
    if args.resume:
        run_dir = Path(args.resume)
        if not (run_dir / "checkpoint.safetensors").is_file():
            raise UserError(f"{run_dir}: nothing to resume (no checkpoint.safetensors)")
        if (run_dir / "model.safetensors").is_file():
            raise UserError(f"{run_dir}: this run has already finished")
        config = read_json(run_dir / CONFIG)
        recipe = Recipe.from_dict(config["recipe"], where=str(run_dir / CONFIG))
        if args.model and args.model != recipe.name:
            raise UserError(f"{run_dir} is a run of {recipe.name}, not {args.model}")
        seed, data_dir = config["seed"], args.data_dir or config.get("data_dir")
    else:
        if not args.model:
            raise UserError("name a zoo model to train (see `robust-uatt zoo`), or --resume RUN_DIR")
        recipe = load_recipe(args.model, args.preset)
        if args.epochs:
            recipe.train["epochs"] = args.epochs
        seed, data_dir = args.seed, args.data_dir
        run_dir = Path(args.out) if args.out else Path(args.runs_dir) / recipe.name / _timestamp()
        if (run_dir / "checkpoint.safetensors").exists() or (run_dir / "model.safetensors").exists():
            raise UserError(f"{run_dir} already holds a run: use --resume {run_dir}, or another --out")
        _check_writable(run_dir)
    try:
        train(recipe, run_dir, seed=seed, device=device, data_dir=data_dir, resume=bool(args.resume),
              download=not args.no_download, console=Console(stderr=True))
    except TrainingDiverged as e:
        sys.stderr.write(f"robust-uatt: training diverged: {e}\n")
        return 3
    print(run_dir)
    return 0


def _check_writable(path: Path) -> None:
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK):
        raise UserError(f"cannot write to {path} ({probe} is not a writable directory)")


def cmd_attack(args: argparse.Namespace) -> int:
    from rich.console import Console

    from robust_uatt.attack import get_attack
    from robust_uatt.data import load_split
    from robust_uatt.harness import parse_eps, run_attack, summarize
    from robust_uatt.io import atomic_write_text, write_json
    from robust_uatt.report import attack_markdown, attack_table
    from robust_uatt.runtime import configure, resolve_device, seed_all, versions
    from robust_uatt.zoo import load_trained

    spec = get_attack(args.attack)
    eps = parse_eps(args.eps)
    _positive_int("n", args.n)
    _positive_int("batch-size", args.batch_size)
    _positive_int("steps", args.steps)
    steps = args.steps or spec.default_steps
    alpha = parse_eps(args.alpha) if args.alpha is not None else 2.5 * eps / steps
    device = resolve_device(args.device)
    model, recipe, weights = load_trained(args.model, args.runs_dir)
    test = load_split(recipe.dataset, "test", args.data_dir, not args.no_download, recipe.data)
    if args.n > len(test):
        raise UserError(f"--n {args.n} exceeds the {len(test)} test images of {recipe.dataset}")
    data = test.subset(slice(0, args.n))
    label = Path(args.model).name if Path(args.model).exists() else args.model
    out = Path(args.out) if args.out else Path(args.runs_dir) / "attacks" / recipe.name / f"{_timestamp()}-{spec.name}"
    if (out / "results.json").exists():
        raise UserError(f"{out}/results.json exists; choose another --out")
    _check_writable(out)

    configure(device)
    seed_all(args.seed)
    model = model.to(device)
    console = Console(stderr=True)
    outcome = run_attack(model, spec, data, eps=eps, alpha=alpha, steps=steps, batch_size=args.batch_size,
                         seed=args.seed, device=device, console=console)
    result: dict[str, Any] = {
        "model": {"name": recipe.name, "spec": args.model, "label": label, "weights": str(weights),
                  "preset": recipe.preset, "recipe": recipe.to_dict()},
        "attack": spec.name, "attack_description": spec.description,
        "threat_model": {"norm": spec.norm, "bounded": spec.bounded, "eps": eps if spec.bounded else None,
                         "eps_text": args.eps, "eps_units": "pixel [0,1]", "steps": steps,
                         "steps_meaning": spec.steps_meaning, "alpha": alpha},
        **summarize(outcome),
        "data": {"dataset": recipe.dataset, "source": data.source, "first_n": args.n,
                 "lossless_fraction": data.lossless_fraction()},
        "seed": args.seed, "device": str(device), "batch_size": args.batch_size,
        "command": "robust-uatt " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        "versions": versions(),
        "per_example": {"clean_correct": outcome.clean_correct.int().tolist(),
                        "robust_correct": outcome.robust_correct.int().tolist()},
    }
    write_json(out / "results.json", result)
    atomic_write_text(out / "results.md", attack_markdown(result))
    Console().print(attack_table(result))
    print(out / "results.json")
    return 0


def cmd_glimpses(args: argparse.Namespace) -> int:
    import torch

    from robust_uatt.data import load_split, to_float
    from robust_uatt.glimpse_plot import plot_glimpses
    from robust_uatt.runtime import resolve_device, seed_all
    from robust_uatt.zoo import load_trained

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
    _check_writable(Path(args.out).parent)
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
