"""Time to an honest verdict (issue 13 item 4): one evaluation per (model, suite, eps), as the ``attack`` command runs
it, with where the time went: model and data loading, the clean pass and set-up (attack-graph check, gradient
probes, state writes), each attack of the cascade (seconds, forward and backward passes, points attacked), and the
sanity checks (seconds and passes). Each evaluation is saved like any other (results.json + results.md under
``--out``); the table and ``--out``/verdict.json summarize them.

    python -m bench.verdict --model zoo/weights/cifar10-vgg.safetensors zoo/weights/cifar10-vgg-attn.safetensors \\
        --suite standard adaptive --eps 8/255 --n 1000 --out docs/results/bench/verdict

An evaluation whose results.json exists under ``--out`` is read back, not rerun (so an interrupted bench resumes).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from bench.common import report
from robust_uatt import api
from robust_uatt.evaluation.results import RESULTS_FILE, EvaluationResult
from robust_uatt.utils.eps import parse_eps


def evaluate_one(model_spec: str, suite: str, eps: str, n: int, out: Path, data_dir: str | None) -> dict:
    """Load, evaluate and save one (model, suite, eps); return its row of the table."""
    t0 = time.perf_counter()
    model = api.load_model(model_spec)
    loaded = time.perf_counter() - t0
    if (out / RESULTS_FILE).is_file():
        result = EvaluationResult.load(out)
        wall = float(result.extra.get("bench_wall_seconds", float("nan")))
    else:
        t1 = time.perf_counter()
        result = api.evaluate(model, eps=eps, suite=suite, n=n, seed=0, data_dir=data_dir, download=False,
                              state_dir=out, command=f"python -m bench.verdict --model {model_spec} --suite {suite} "
                                                     f"--eps {eps} --n {n}")
        wall = loaded + time.perf_counter() - t1
        result.extra["bench_wall_seconds"] = wall
        result.save(out)
    timing = result.timing
    per_attack = "; ".join(f"{row['name']} {row['seconds']:.0f}s ({row['attacked']} pts)" for row in result.attacks)
    return {"model": result.name, "suite": suite, "eps": eps, "n": result.n, "verdict": result.verdict,
            "clean": result.clean_accuracy, "robust": result.robust_accuracy, "wall_s": wall, "load_s": loaded,
            "clean_setup_s": timing.get("clean_and_setup_seconds", float("nan")),
            "attacks_s": timing.get("attack_seconds", result.seconds),
            "checks_s": timing.get("checks_seconds", float("nan")),
            "forward": result.forward_passes + timing.get("checks_forward_passes", 0),
            "backward": result.backward_passes + timing.get("checks_backward_passes", 0),
            "per_attack": per_attack}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", nargs="+", required=True, help="zoo names, run directories or .safetensors")
    parser.add_argument("--suite", nargs="+", default=["standard", "adaptive"])
    parser.add_argument("--eps", nargs="+", default=["8/255"])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", default="runs/bench/verdict")
    args = parser.parse_args(argv)
    for eps in args.eps:
        parse_eps(eps)  # a bad radius fails before anything runs
    rows, details = [], []
    for spec in args.model:
        for suite in args.suite:
            for eps in args.eps:
                name = Path(spec).stem if spec.endswith(".safetensors") else Path(spec).name
                out = Path(args.out) / f"{name}-{suite}-eps-{eps.replace('/', '_')}"
                row = evaluate_one(spec, suite, eps, args.n, out, args.data_dir)
                details.append(row.pop("per_attack"))
                rows.append(row)
    report("time to a verdict", rows, Path(args.out) / "verdict.json",
           {"threads": torch.get_num_threads(), "n": args.n, "per_attack": details})


if __name__ == "__main__":
    main()
