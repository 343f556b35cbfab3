"""Training speed of the Table 3 recipes (multi-digit MNIST), to plan their runs: images/s of one optimizer step
(the model's objective, backward, Adam) per recipe and preset, on real generated 54x54 multi-digit images.

    python -m bench.table3 --steps 3 --batch 128 --threads 1

A plan is then epochs x training images / (images/s); add ~5% for validation and the final test pass.
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torch.nn.functional as F

from bench.common import report
from robust_uatt.data.datasets import load_split, to_float
from robust_uatt.models.zoo import count_params, create_model, load_recipe

RECIPES = ("multidigit-mnist-cnn", "multidigit-mnist-dram", "multidigit-mnist-uatt-entropy", "multidigit-mnist-uatt")


def images_per_second(recipe_name: str, preset: str | None, x: torch.Tensor, y: torch.Tensor, steps: int) -> dict:
    recipe = load_recipe(recipe_name, preset)
    torch.manual_seed(0)
    model = create_model(recipe).train()
    opt = torch.optim.Adam(model.parameters(), lr=recipe.train["lr"])

    def step() -> None:
        loss = model.objective(x, y)[0] if hasattr(model, "objective") else F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if hasattr(model, "after_optimizer_step"):
            model.after_optimizer_step()

    step()  # warm-up
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    ips = steps * len(x) / (time.perf_counter() - t0)
    train_n = recipe.train["limit_train"] or 60000 - recipe.data["holdout"]
    hours = recipe.train["epochs"] * train_n / ips / 3600
    return {"recipe": recipe_name, "preset": preset or "(full)", "params": count_params(model),
            "images_per_s": round(ips, 1), "epochs": recipe.train["epochs"], "train_images": train_n,
            "planned_hours": round(hours, 2)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--presets", default="full,cpu")
    p.add_argument("--out", default="runs/bench/table3.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    train = load_split("multidigit-mnist", "train", None, download=False,
                       params={"canvas": 64, "crop": 54, "min_digits": 1, "max_digits": 5, "digits_seed": 0})
    x, y = to_float(train.x[:args.batch]), train.y[:args.batch]
    rows = [images_per_second(name, None if preset == "full" else preset, x, y, args.steps)
            for preset in args.presets.split(",") for name in RECIPES]
    report("Table 3 recipes: training images/s (multidigit-mnist, 54x54)", rows, args.out,
           {"batch": args.batch, "steps": args.steps, "threads": args.threads,
            "load_average_1min": os.getloadavg()[0]})


if __name__ == "__main__":
    main()
