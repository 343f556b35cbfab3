"""Adversarial training throughput: images/s of the first steps of an adversarial epoch, per recipe and inner
attack, beside a clean step of the same model (interleaved, so load drifts hit all alike), through the training
loop's own ``train_step``.

    python -m bench.adv_train --recipe cifar10-vgg-at --recipe cifar10-vgg-attn-at --kinds fgsm-rs --steps 5

The planned runs' budgets in the README come from these numbers; the guard's per-epoch PGD on the validation batch
is not included (it is timed in the run's metrics).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from rich.console import Console

from bench.common import race, report
from robust_uatt.models.zoo import create_model, load_recipe
from robust_uatt.training.checkpoint import TrainState
from robust_uatt.training.config import adv_settings
from robust_uatt.training.loop import Run, make_optimizer, split_data, train_step
from robust_uatt.utils.runtime import configure, resolve_device, seed_all


def stepper(recipe_name: str, kind: str, device: torch.device, data_dir: str | None):
    """A function doing one training step of ``recipe_name`` (clean when kind is "clean") on the next batch."""
    recipe = load_recipe(recipe_name)
    adv = None
    if kind != "clean":
        adv = adv_settings({**recipe.adv, "kind": kind}, "bench")
    splits = split_data(recipe, data_dir, download=False)
    seed_all(0)
    model = create_model(recipe).to(device)
    state = TrainState(model, make_optimizer(model, recipe.train), torch.Generator().manual_seed(0))
    run = Run(recipe, Path(tempfile.gettempdir()), 0, device, splits, Console(quiet=True), adv)
    batch, train_set = recipe.train["batch_size"], splits[0]
    perm = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(0))
    counter = {"step": 0}

    def step() -> None:
        i = counter["step"] % (len(train_set) // batch)
        model.train()
        train_step(run, state, train_set, perm[i * batch:(i + 1) * batch], counter["step"])
        counter["step"] += 1

    return step, batch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--recipe", action="append", default=None)
    p.add_argument("--kinds", default="fgsm-rs", help="comma-separated: fgsm-rs, pgd, trades")
    p.add_argument("--steps", type=int, default=5, help="timed steps per kind (after 2 warm-up steps)")
    p.add_argument("--device", default="auto")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", default="runs/bench/adv_train.json")
    args = p.parse_args()
    device = resolve_device(args.device)
    configure(device)
    rows = []
    for name in args.recipe or ["cifar10-vgg-at", "cifar10-vgg-attn-at"]:
        kinds = ["clean", *args.kinds.split(",")]
        steps = {k: stepper(name, k, device, args.data_dir) for k in kinds}
        seconds = race({k: fn for k, (fn, _) in steps.items()}, repeats=args.steps)
        for k in kinds:
            ips = steps[k][1] / seconds[k]
            rows.append({"recipe": name, "step": k, "images/s": ips,
                         "cost vs clean": seconds[k] / seconds["clean"]})
    report("adversarial training step (train_step, interleaved)", rows, args.out,
           {"steps": args.steps, "device": str(device), "note": "first steps of an epoch; guard not included"})


if __name__ == "__main__":
    main()
