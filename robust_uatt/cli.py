"""robust-uatt: train the unified attention model and its baselines, attack them with the paper's protocol beside
the honest worst case (sanity checks decide valid or INVALID), draw security curves, and compare the results with
RobustBench at the same threat model.

Start with `robust-uatt zoo` (the models), `robust-uatt attacks` and `robust-uatt suites` (what --attack and --suite
accept), then `robust-uatt train cifar10-vgg --preset smoke` and
`robust-uatt attack --model cifar10-vgg --suite quick`.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NoReturn

from robust_uatt._version import __version__
from robust_uatt.utils import toml
from robust_uatt.utils.errors import UserError, environment_error, printable

EXIT_USER_ERROR = 2
EXIT_INVALID = 4  # a gating sanity check failed: the robust accuracy must not be reported
EXIT_RANK_FAILED = 5  # under torchrun: another rank stopped or timed out (rerun the same command to resume)


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line on stderr (exit 2), like every other user error."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"robust-uatt: error: {printable(message)} (see {self.prog} --help)\n")
        raise SystemExit(EXIT_USER_ERROR)


def _timestamp() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")


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


def _add_judge_draws(p: argparse.ArgumentParser) -> None:
    p.add_argument("--judge-draws", type=int, default=None, metavar="K",
                   help="judge every point (clean and adversarial) by a majority of K passes (default 1, and 9 "
                        "with --policy sample); recorded in the results")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="robust-uatt", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                     epilog="Bad input is one line on stderr with exit code 2; INVALID attack results exit 4.")
    parser.add_argument("--version", action="version", version=f"robust-uatt {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    z = sub.add_parser("zoo", help="list the model zoo")
    z.add_argument("--names", action="store_true", help="only the names, one a line (for scripts)")
    sub.add_parser("attacks", help="list the attacks (what --attack accepts)")
    sub.add_parser("suites", help="list the attack suites (what --suite accepts)")
    _add_train(sub)
    _add_attack(sub)
    _add_curve(sub)
    _add_selftest(sub)
    _add_glimpses(sub)
    _add_compare(sub)
    _add_benchmark(sub)
    _add_seeds(sub)
    _add_paper_table(sub)
    return parser


def _add_train(sub: Any) -> None:
    p = sub.add_parser("train", help="train a zoo model")
    p.add_argument("model", nargs="?", help="zoo name (see `robust-uatt zoo`) or a recipe .toml file")
    p.add_argument("--preset", default=None, help="recipe preset, e.g. smoke or cpu")
    p.add_argument("--epochs", type=int, default=None, help="override the recipe's epochs")
    p.add_argument("--out", default=None, help="run directory (default: RUNS/<model>/<timestamp>)")
    p.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue an interrupted run")
    p.add_argument("--patience", type=int, default=None,
                   help="override the recipe's early-stopping patience (epochs without a new best; 0: never stop)")
    p.add_argument("--extend", default=None, metavar="RUN_DIR",
                   help="continue a finished run that early stopping ended, into --out, under a larger patience "
                        "(--patience or a --preset that changes only it); its epochs are not trained again")
    p.add_argument("--deterministic", action="store_true",
                   help="deterministic algorithms on CUDA too (slower; always on for the CPU)")
    p.add_argument("--sync-bn", action="store_true",
                   help="under torchrun: BatchNorm -> SyncBatchNorm, statistics over the global batch (CUDA only)")
    a = p.add_argument_group("adversarial training (Linf; overrides the recipe's [adv] table)")
    a.add_argument("--adv", default=None, metavar="KIND", help="fgsm-rs (Wong et al. 2020), pgd (Madry et al.) or "
                   "trades (Zhang et al. 2019)")
    a.add_argument("--adv-eps", default=None, help="radius in [0,1] pixel units, e.g. 8/255")
    a.add_argument("--adv-alpha", default=None, help="step size (default 1.25 eps for fgsm-rs, eps/4 otherwise)")
    a.add_argument("--adv-steps", type=int, default=None, help="iterations of pgd and trades (default 10)")
    a.add_argument("--adv-beta", type=float, default=None, help="TRADES weight of the KL term (default 6)")
    a.add_argument("--adv-guard-drop", type=float, default=None,
                   help="stop and restore the best epoch when validation PGD accuracy falls this far below it "
                        "(default 0.2)")
    _add_common(p)
    p.set_defaults(seed=None)  # None: not given (a fresh run uses 0; --resume refuses a --seed)


def _add_attack(sub: Any) -> None:
    p = sub.add_parser("attack", help="attack a model with one attack or a suite; worst case per example")
    p.add_argument("--model", default=None, help="zoo name (newest finished run), run directory or .safetensors")
    p.add_argument("--model-factory", default=None, metavar="MODULE:FUNCTION",
                   help="your own nn.Module (maps [0,1] images to logits); weights from --checkpoint")
    p.add_argument("--checkpoint", default=None, help="safetensors state dict for --model-factory")
    p.add_argument("--robustbench", default=None, metavar="NAME", help="a RobustBench model from --model-dir")
    p.add_argument("--model-dir", default="models", help="RobustBench model directory (offline)")
    p.add_argument("--dataset", default="cifar10", help="dataset for --model-factory / --robustbench")
    p.add_argument("--attack", default="pgd", help="one attack (see `robust-uatt attacks`), e.g. pgd, pgd-eq14")
    p.add_argument("--suite", default=None, help="an attack suite (see `robust-uatt suites`), e.g. quick, adaptive")
    p.add_argument("--eps", default="8/255", help="Linf radius in [0,1] pixel units: 0.3, 8/255, ...")
    p.add_argument("--steps", type=int, default=None, help="iterations (queries/draws) of a single --attack")
    p.add_argument("--alpha", default=None, help="step size (default 2.5*eps/steps)")
    p.add_argument("--eot", type=int, default=None, help="EOT samples per step (default 8 with --policy sample)")
    p.add_argument("--policy", default="mean", help="attention models: mean (deterministic) or sample")
    _add_judge_draws(p)
    p.add_argument("--source", default=None, help="add a transfer attack made on this model (zoo name/run/file)")
    p.add_argument("--option", action="append", metavar="KEY=VALUE",
                   help="attack option, e.g. grad_path=full, tau=0.1, restarts=3 (repeatable)")
    p.add_argument("--checks", default="fast", help="sanity checks: none, fast (default) or full")
    p.add_argument("--no-cascade", action="store_true", help="run every attack on every clean-correct point")
    p.add_argument("--n", "--images", type=int, default=1000, dest="n",
                   help="attack the first n test images (--images: the same, for torchrun, whose own parser takes "
                        "--n for an abbreviation of its options)")
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--out", default=None, help="output directory (default: RUNS/attacks/<model>/<timestamp>-<suite>)")
    s = p.add_argument_group("scaling out (see README: Scaling out; under torchrun every rank takes its shard)")
    s.add_argument("--block", type=int, default=1000,
                   help="points per evaluation block, the unit shards split (default 1000; part of the result)")
    s.add_argument("--shard", default=None, metavar="I/K",
                   help="evaluate only shard I of K into --out (resumable); join them with --merge")
    s.add_argument("--merge", action="append", default=None, metavar="SHARD_DIR",
                   help="join finished shard folders (repeatable; same arguments otherwise), check, write --out")
    _add_common(p)


def _add_curve(sub: Any) -> None:
    p = sub.add_parser("curve", help="security curve: robust accuracy against eps (JSON + PNG)")
    p.add_argument("--model", required=True, help="zoo name (newest finished run), run directory or .safetensors")
    p.add_argument("--eps", required=True, help="comma-separated radii, e.g. 0,1/255,2/255,4/255,8/255,16/255,0.1,0.3")
    p.add_argument("--attack", default="pgd-ce", help="attack at every eps (default pgd-ce)")
    p.add_argument("--suite", default=None, help="or a suite at every eps")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--eot", type=int, default=None, help="EOT samples per step (default 8 with --policy sample)")
    p.add_argument("--policy", default="mean", help="attention models: mean (deterministic) or sample")
    _add_judge_draws(p)
    p.add_argument("--checks", default="fast", help="sanity checks at every eps: none, fast (default) or full")
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--out", default=None, help="output directory (default: RUNS/curves/<model>/<timestamp>)")
    _add_common(p)


def _add_selftest(sub: Any) -> None:
    p = sub.add_parser("selftest", help="plant gradient-masking tricks on a small CIFAR-10 CNN: each must end near "
                                         "the undefended number or INVALID naming the trick")
    p.add_argument("--seed", type=_seed, default=0, help="random seed, 0..2^32-1")
    p.add_argument("--n", type=int, default=200, help="test images attacked (default 200)")
    p.add_argument("--data-dir", default=None, help="folder with cifar10_{train,test}.npz; default: $ROBUST_UATT_DATA")


def _add_glimpses(sub: Any) -> None:
    p = sub.add_parser("glimpses", help="draw where an attention model looks (top-down region, numbered glimpses)")
    p.add_argument("--model", required=True, help="zoo name (newest finished run), run directory or .safetensors")
    p.add_argument("--n", type=int, default=8, help="the first n test images")
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument("--policy", default="mean", help="mean (deterministic) or sample")
    _add_common(p)


def _add_compare(sub: Any) -> None:
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


def _add_seeds(sub: Any) -> None:
    p = sub.add_parser("seeds", help="mean and spread over training seeds of attack results (one row per model, "
                                     "preset, suite and eps)")
    p.add_argument("results", nargs="+", help="results.json files, folders holding them, or zoo names")
    p.add_argument("--out", default=None, help="folder for seeds.json and seeds.md (default: print only)")
    p.add_argument("--runs-dir", default=os.environ.get("ROBUST_UATT_RUNS", "runs"),
                   help="where zoo names are looked up (default: runs, or $ROBUST_UATT_RUNS)")


def _add_paper_table(sub: Any) -> None:
    p = sub.add_parser("paper-table", help="the paper's Table 1, 2 or 3 (error rates) beside our finished runs")
    p.add_argument("table", type=int, choices=(1, 2, 3), help="1: MNIST, 2: cluttered MNIST, 3: multi-digit")
    p.add_argument("--preset", default=None,
                   help="only runs of this preset; none: only runs without a preset (default: every finished run)")
    p.add_argument("--out", default=None, help="folder for table<N>.json and table<N>.md (default: print only)")
    p.add_argument("--runs-dir", default=os.environ.get("ROBUST_UATT_RUNS", "runs"),
                   help="where the runs are (default: runs, or $ROBUST_UATT_RUNS)")
    p.add_argument("--records", default=None,
                   help="read committed run records instead: DIR/<recipe>-seed<S>[-<preset>]/model_card.json "
                        "(e.g. docs/results/tables/runs)")


def _add_benchmark(sub: Any) -> None:
    p = sub.add_parser("benchmark", help="evaluate the zoo's CIFAR-10 models (shipped weights or local runs) beside "
                                         "RobustBench: clean, the paper's protocol, a quick worst case")
    p.add_argument("--model", action="append", default=None,
                   help="zoo name, run directory or .safetensors (repeatable; default: every CIFAR-10 zoo model with "
                        "weights)")
    p.add_argument("--eps", default="8/255,1/255", help="comma-separated radii in [0,1] pixel units")
    p.add_argument("--n", type=int, default=200, help="the first n test images (default 200)")
    p.add_argument("--suite", default="zoo", help="attack suite at every radius (default zoo)")
    p.add_argument("--leaderboard", default=None, metavar="DIR", help="RobustBench rows (default "
                                                                      "$ROBUST_UATT_DATA/robustbench)")
    p.add_argument("--out", default=None, help="output folder (default: RUNS/benchmark/<timestamp>)")
    _add_common(p)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    from robust_uatt.utils.runtime import pin_code_version

    pin_code_version()  # results stamp the commit this process started from, not one made while it ran
    try:
        if args.command not in ("train", "attack") and os.environ.get("WORLD_SIZE", "1") not in ("", "1"):
            raise UserError(f"`{args.command}` runs in one process; under torchrun only train and attack scale out "
                            f"(see README: Scaling out)")
        return COMMANDS[args.command](args)
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
    except Exception as e:
        from robust_uatt.utils.distributed import DistributedFailure

        if not isinstance(e, DistributedFailure):
            raise
        sys.stderr.write(f"robust-uatt: error: {_one_line(str(e))}\n")
        return EXIT_RANK_FAILED
    finally:
        if "torch.distributed" in sys.modules:
            from robust_uatt.utils.distributed import shutdown

            shutdown()


def _one_line(text: str) -> str:
    """A message that quotes user input (which may hold newlines, escape sequences) prints as one line of text:
    control characters are written as escapes (\\n, \\x1b), never sent to the terminal."""
    return printable(text)


def _command(args: argparse.Namespace) -> str:
    """The command line as given (``main(argv)`` from Python: that argv, not the host program's)."""
    return "robust-uatt " + " ".join(shlex.quote(a) for a in args.argv)


def _provenance(args: argparse.Namespace, started: float | None = None) -> dict[str, Any]:
    """What produced a report file: the command line, the time, the versions (and the seconds it took)."""
    from robust_uatt.utils.runtime import versions

    out: dict[str, Any] = {"command": _command(args), "versions": versions(),
                           "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    if started is not None:
        out["seconds"] = round(time.monotonic() - started, 1)
    return out


def parse_options(pairs: list[str]) -> dict[str, Any]:
    """--option key=value (value as TOML reads it: 0.1, 3, true, "text"; bare text stays text)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UserError(f"--option expects key=value, got '{pair}'")
        out[key] = toml.scalar(value)
    return out


def cmd_zoo(args: argparse.Namespace) -> int:
    from rich.console import Console

    from robust_uatt import api
    from robust_uatt.viz.tables import zoo_table

    if args.names:
        print("\n".join(api.list_models()))
        return 0
    Console().print(zoo_table(api.zoo()))
    return 0


def cmd_attacks(args: argparse.Namespace) -> int:
    from robust_uatt import api

    _print_names("attacks (--attack NAME; several in a suite)", api.list_attacks())
    return 0


def cmd_suites(args: argparse.Namespace) -> int:
    from robust_uatt import api

    _print_names("suites (--suite NAME, from attacks/NAME.toml)", api.list_suites())
    return 0


def _print_names(title: str, names: dict[str, str]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    table.add_column("name", no_wrap=True)
    table.add_column("what it does", overflow="fold")
    for name, description in names.items():
        table.add_row(name, description)
    Console().print(table)


def cmd_train(args: argparse.Namespace) -> int:
    from rich.console import Console

    from robust_uatt import api
    from robust_uatt.training.loop import TrainingDiverged

    try:
        run_dir = api.train(args.model, args.preset, args.out, resume=args.resume, epochs=args.epochs, seed=args.seed,
                            device=args.device, data_dir=args.data_dir, download=not args.no_download,
                            runs_dir=args.runs_dir, deterministic=True if args.deterministic else None,
                            console=Console(stderr=True), adv=args.adv, adv_eps=args.adv_eps,
                            adv_alpha=args.adv_alpha, adv_steps=args.adv_steps, adv_beta=args.adv_beta,
                            adv_guard_drop=args.adv_guard_drop, sync_bn=args.sync_bn, patience=args.patience,
                            extend=args.extend)
    except TrainingDiverged as e:
        sys.stderr.write(f"robust-uatt: training diverged: {_one_line(str(e))}\n")
        return 3
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 speaks for the run
        print(run_dir)
    return 0


def cmd_attack(args: argparse.Namespace) -> int:
    from rich.console import Console

    from robust_uatt import api
    from robust_uatt.viz.tables import attack_table

    if args.shard and args.merge:
        raise UserError("--shard evaluates one shard, --merge joins finished ones: give one of them")
    if (args.shard or args.merge) and os.environ.get("WORLD_SIZE", "1") not in ("", "1"):
        raise UserError("--shard and --merge are for runs without torchrun (under torchrun every rank takes its "
                        "shard and rank 0 merges)")
    if args.shard and not args.out:
        raise UserError("--shard needs --out (the shard's folder, which --merge later reads)")
    if args.shard:
        api.parse_shard(args.shard)  # a bad spec is one line before the model loads
    model = api.load_model(args.model, factory=args.model_factory, checkpoint=args.checkpoint,
                           robustbench=args.robustbench, dataset=args.dataset, runs_dir=args.runs_dir,
                           model_dir=args.model_dir)
    common = dict(eps=args.eps, suite=args.suite, attacks=[args.attack], steps=args.steps,
                  alpha=args.alpha, eot=args.eot, options=parse_options(args.option or []),
                  source=args.source, policy=args.policy, judge_draws=args.judge_draws, checks=args.checks,
                  cascade=not args.no_cascade, n=args.n, batch_size=args.batch_size, device=args.device,
                  seed=args.seed, runs_dir=args.runs_dir, data_dir=args.data_dir, download=not args.no_download,
                  block=args.block)
    if args.shard:
        state = api.evaluate_shard(model, shard=args.shard, out=args.out, console=Console(stderr=True), **common)
        print(f"shard {args.shard} finished: {state}; join all shards with the same command, --merge DIR for "
              f"each shard folder instead of --shard, and a new --out")
        return 0
    result = api.evaluate(model, **common, save=True, out=args.out, console=Console(stderr=True),
                          command=_command(args), merge=args.merge)
    if result is None:  # torchrun, rank > 0: rank 0 gathered this rank's shard and writes the result
        return 0
    Console().print(attack_table(result.to_json()))
    print(result.path)
    return EXIT_INVALID if result.status == "INVALID" else 0  # UNCHECKED (--checks none): a number, exit 0


def cmd_curve(args: argparse.Namespace) -> int:
    from rich.console import Console

    from robust_uatt import api
    from robust_uatt.viz.tables import curve_table

    model = api.load_model(args.model, runs_dir=args.runs_dir)
    curve = api.security_curve(model, eps=args.eps.split(","), suite=args.suite,
                               attacks=None if args.suite else [args.attack], steps=args.steps, n=args.n,
                               policy=args.policy, eot=args.eot, judge_draws=args.judge_draws, checks=args.checks,
                               batch_size=args.batch_size, device=args.device, seed=args.seed, save=True,
                               out=args.out, runs_dir=args.runs_dir, data_dir=args.data_dir,
                               download=not args.no_download, console=Console(stderr=True), command=_command(args))
    Console().print(curve_table(curve))
    print(curve["path"])
    return 0 if curve["valid"] else EXIT_INVALID


def cmd_selftest(args: argparse.Namespace) -> int:
    from rich.console import Console

    from robust_uatt import api
    from robust_uatt.viz.tables import selftest_table

    if args.n <= 0:
        raise UserError(f"--n must be a positive integer, got {args.n}")
    results = api.selftest(args.seed, data_dir=args.data_dir, n=args.n)
    table, ok = selftest_table(results)
    Console(width=200).print(table)
    plants = {n: r for n, r in results.items() if n != "undefended model"}
    print(f"caught {sum(r['caught'] for r in plants.values())} of {len(plants)} masked models; undefended model "
          f"{'FAILS' if results['undefended model']['caught'] else 'passes'}")
    return 0 if ok else 1


def cmd_glimpses(args: argparse.Namespace) -> int:
    from robust_uatt import api

    if args.n <= 0:
        raise UserError(f"--n must be a positive integer, got {args.n}")
    if not args.out.lower().endswith(".png"):
        raise UserError(f"--out must name a .png file, got {args.out}")
    model = api.load_model(args.model, runs_dir=args.runs_dir)
    print(api.draw_glimpses(model, args.out, n=args.n, policy=args.policy, seed=args.seed, device=args.device,
                            data_dir=args.data_dir, download=not args.no_download))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from rich.console import Console

    from robust_uatt import api
    from robust_uatt.benchmark.compare import report_tables

    report = api.compare(args.model, args.leaderboard, top=args.top, runs_dir=args.runs_dir)
    out = Path(args.out) if args.out else Path(args.runs_dir) / "compare" / f"{_timestamp()}.json"
    api.write_json_file(out, report.to_json())
    console = Console()
    for table in report_tables(report):
        console.print(table)
    print(out)
    return 0


def cmd_benchmark(args: argparse.Namespace) -> int:
    from rich.console import Console

    from robust_uatt import api
    from robust_uatt.benchmark.compare import report_tables
    from robust_uatt.benchmark.zoo import benchmark_table

    out = Path(args.out) if args.out else Path(args.runs_dir) / "benchmark" / _timestamp()
    started = time.monotonic()
    bench = api.benchmark(args.model, [e.strip() for e in args.eps.split(",") if e.strip()], n=args.n,
                          suite=args.suite, out=out, device=args.device, runs_dir=args.runs_dir,
                          data_dir=args.data_dir, download=not args.no_download, leaderboard=args.leaderboard,
                          console=Console(stderr=True))
    api.write_json_file(out / "benchmark.json", {"rows": bench.rows(), "comparison": bench.comparison.to_json(),
                                                 **_provenance(args, started)})
    console = Console()
    console.print(benchmark_table(bench))
    for table in report_tables(bench.comparison):
        console.print(table)
    print(out / "benchmark.json")
    return 0 if all(r.valid for r in bench.results) else EXIT_INVALID


def cmd_seeds(args: argparse.Namespace) -> int:
    from robust_uatt import api
    from robust_uatt.benchmark.seeds import seeds_markdown, spread_note

    groups = api.seeds(args.results, runs_dir=args.runs_dir)
    text = seeds_markdown(groups)
    note = spread_note(groups)
    if args.out:
        from robust_uatt.utils.files import atomic_write_text

        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        api.write_json_file(out / "seeds.json", {"rows": [g.to_json() for g in groups], "note": note,
                                                 "spread": "sample standard deviation over training seeds",
                                                 **_provenance(args)})
        atomic_write_text(out / "seeds.md", text + (f"\n{note}\n" if note else ""))
    print(text + (f"\n{note}" if note else ""))
    return 0


def cmd_paper_table(args: argparse.Namespace) -> int:
    from robust_uatt import api

    report = api.paper_table(args.table, runs_dir=args.runs_dir, preset=args.preset, records=args.records)
    if args.out:
        from robust_uatt.utils.files import atomic_write_text

        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        api.write_json_file(out / f"table{args.table}.json", {**report, **_provenance(args)})
        atomic_write_text(out / f"table{args.table}.md", report["markdown"])
    print(report["markdown"])
    return 0


COMMANDS = {"benchmark": cmd_benchmark, "seeds": cmd_seeds, "paper-table": cmd_paper_table, "zoo": cmd_zoo, "attacks": cmd_attacks, "suites": cmd_suites,
            "train": cmd_train, "attack": cmd_attack, "curve": cmd_curve, "selftest": cmd_selftest,
            "glimpses": cmd_glimpses, "compare": cmd_compare}
