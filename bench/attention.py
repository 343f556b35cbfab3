"""Cost of attention: cifar10-vgg-attn / cifar10-vgg per training step and per attack step, same width and batch.

    python bench/attention.py --width 0.5 --batch 128 --repeats 10

An attack step = forward + backward to the input in eval mode with frozen parameters (what PGD does each iteration).
Also times the glimpse sensor alone (all scales of a batch in one grid_sample per glimpse).
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from bench.common import race, report
from robust_uatt.evaluation.harness import frozen_parameters
from robust_uatt.models.zoo import create_model, load_recipe


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--width", type=float, default=0.5)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--out", default="runs/bench/attention.json")
    p.add_argument("--profile", action="store_true", help="also print where a vgg+attn train step spends its time")
    args = p.parse_args()
    torch.manual_seed(0)
    vgg_recipe = load_recipe("cifar10-vgg")
    vgg_recipe.model["width"] = args.width
    attn_recipe = load_recipe("cifar10-vgg-attn")
    attn_recipe.model["vgg_width"] = args.width
    models = {"cifar10-vgg": create_model(vgg_recipe), "cifar10-vgg-attn": create_model(attn_recipe)}
    x = torch.rand(args.batch, 3, 32, 32)
    y = torch.randint(0, 10, (args.batch,))

    def train_step(model):
        opt = torch.optim.Adam(model.parameters(), 1e-4)

        def step() -> None:
            model.train()
            loss = model.objective(x, y)[0] if hasattr(model, "objective") else F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return step

    def attack_step(model):
        def step() -> None:
            model.eval()
            with frozen_parameters(model):
                xa = x.clone().requires_grad_(True)
                loss = F.cross_entropy(model(xa), y)
                torch.autograd.grad(loss, xa)
        return step

    train = race({k: train_step(m) for k, m in models.items()}, args.repeats)
    attack = race({k: attack_step(m) for k, m in models.items()}, args.repeats)
    sensor = models["cifar10-vgg-attn"].sensor
    loc = torch.rand(args.batch, 2) * 2 - 1
    glimpse = race({"sensor": lambda: sensor(x, loc)}, args.repeats * 5)["sensor"]
    rows = [
        {"measure": "train step", "vgg s": train["cifar10-vgg"], "vgg+attn s": train["cifar10-vgg-attn"],
         "ratio": train["cifar10-vgg-attn"] / train["cifar10-vgg"], "target": "<= 1.3"},
        {"measure": "attack step", "vgg s": attack["cifar10-vgg"], "vgg+attn s": attack["cifar10-vgg-attn"],
         "ratio": attack["cifar10-vgg-attn"] / attack["cifar10-vgg"], "target": "<= 1.5"},
        {"measure": "glimpse sensor (1 glimpse)", "vgg s": float("nan"), "vgg+attn s": glimpse,
         "ratio": float("nan"), "target": "-"},
    ]
    report(f"attention overhead, width {args.width}, batch {args.batch}", rows, args.out,
           {"width": args.width, "batch": args.batch, "repeats": args.repeats})
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        step = train_step(models["cifar10-vgg-attn"])
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(3):
                step()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


if __name__ == "__main__":
    main()
