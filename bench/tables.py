"""Training speed of the paper-table recipes, to plan their runs: images/s of one optimizer step (the model's
objective, backward, Adam) per recipe and preset, on the recipe's own data (Table 2: generated 100x100 cluttered
MNIST; Table 3: generated 54x54 multi-digit MNIST).

    python -m bench.tables --table 3 --steps 3 --batch 128 --threads 1
    python -m bench.tables --table 2 --presets full --steps 3 --threads 1

A plan is then epochs x training images / (images/s); add ~5% for validation and the final test pass (for an
early-stopped recipe, `epochs` is its cap, so the figure is an upper bound).
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
from robust_uatt.models.zoo import recipe_names as zoo_recipe_names

PREFIXES = {"1": "mnist-", "2": "cluttered-mnist-", "3": "multidigit-mnist-"}


def recipe_names(table: str) -> list[str]:
    return [name for name in zoo_recipe_names() if name.startswith(PREFIXES[table])]


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
    p.add_argument("--table", choices=sorted(PREFIXES), default="3")
    p.add_argument("--out", default=None, help="default runs/bench/tableN.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rows, batches = [], {}
    for preset in args.presets.split(","):
        for name in recipe_names(args.table):
            recipe = load_recipe(name, None)
            key = (recipe.dataset, repr(sorted(recipe.data.items())))
            if key not in batches:  # one batch of the recipe's own data, generated as training generates it
                train = load_split(recipe.dataset, "train", None, False, recipe.data)
                batches[key] = (to_float(train.x[:args.batch]), train.y[:args.batch])
            rows.append(images_per_second(name, None if preset == "full" else preset, *batches[key], args.steps))
    report(f"Table {args.table} recipes: training images/s", rows, args.out or f"runs/bench/table{args.table}.json",
           {"batch": args.batch, "steps": args.steps, "threads": args.threads,
            "load_average_1min": os.getloadavg()[0]})


if __name__ == "__main__":
    main()
