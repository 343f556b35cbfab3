"""Our PGD loop vs torchattacks.PGD on the same VGG16, batch, points and seed.

    python -m bench.attack --model runs/cifar10-vgg/cpu-seed0 --n 256 --steps 30 --eps 8/255

Two figures, both measured in this one run:
- equal work: both run every step on every point (ours with early_stop off); images/s and robust accuracy (they must
  agree within noise: same update rule, different random starts);
- time to result: ours as the harness runs it (points dropped as soon as they are misclassified) vs torchattacks.
Peak memory of the attack at the given batch size is reported from the process's max RSS (CPU) or CUDA's counter.
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

from bench.common import report
from robust_uatt.attacks.base import per_example_uniform
from robust_uatt.attacks.pgd import pgd
from robust_uatt.data.datasets import load_split, to_float
from robust_uatt.evaluation.harness import frozen_parameters
from robust_uatt.models.zoo import load_trained
from robust_uatt.utils.eps import parse_eps
from robust_uatt.utils.runtime import resolve_device


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", required=True)
    p.add_argument("--n", type=int, default=256)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--eps", default="8/255")
    p.add_argument("--device", default="auto")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", default="runs/bench/attack.json")
    args = p.parse_args()
    import torchattacks

    device = resolve_device(args.device)
    eps = parse_eps(args.eps)
    alpha = 2.5 * eps / args.steps
    model, recipe, weights = load_trained(args.model)
    model = model.to(device).eval()
    test = load_split(recipe.dataset, "test", args.data_dir, download=False)
    x = to_float(test.x[:args.n]).to(device)
    y = test.y[:args.n].to(device)
    index = torch.arange(args.n)

    def ours(early_stop: bool) -> tuple[float, float]:
        t0 = time.perf_counter()
        adv = []
        with frozen_parameters(model):
            for s in range(0, args.n, args.batch):
                sl = slice(s, s + args.batch)
                init = per_example_uniform(x[sl], index[sl], eps, seed=0)
                adv.append(pgd(model, x[sl], y[sl], eps=eps, alpha=alpha, steps=args.steps, init=init,
                               early_stop=early_stop, keep="best" if early_stop else "last"))
        seconds = time.perf_counter() - t0
        with torch.inference_mode():
            acc = float((model(torch.cat(adv)).argmax(1) == y).float().mean())
        return args.n / seconds, acc

    def theirs() -> tuple[float, float]:
        torch.manual_seed(0)
        attack = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=args.steps, random_start=True)
        t0 = time.perf_counter()
        adv = torch.cat([attack(x[s:s + args.batch], y[s:s + args.batch]) for s in range(0, args.n, args.batch)])
        seconds = time.perf_counter() - t0
        with torch.inference_mode():
            acc = float((model(adv).argmax(1) == y).float().mean())
        return args.n / seconds, acc

    ta_ips, ta_acc = theirs()
    eq_ips, eq_acc = ours(early_stop=False)
    ttr_ips, ttr_acc = ours(early_stop=True)
    peak = (torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    rows = [
        {"attack": "torchattacks.PGD", "images/s": ta_ips, "robust acc": ta_acc, "speed-up": 1.0},
        {"attack": "ours, equal work (no early stop)", "images/s": eq_ips, "robust acc": eq_acc,
         "speed-up": eq_ips / ta_ips},
        {"attack": "ours, time to result (early stop)", "images/s": ttr_ips, "robust acc": ttr_acc,
         "speed-up": ttr_ips / ta_ips},
    ]
    report(f"PGD-{args.steps} on {recipe.name} ({weights}), n={args.n}, batch {args.batch}, eps {args.eps}", rows,
           args.out, {"model": str(weights), "n": args.n, "batch": args.batch, "steps": args.steps, "eps": eps,
                      "peak_memory_mib": peak, "device": str(device)})
    print(f"peak memory: {peak:.0f} MiB ({'CUDA allocated' if device.type == 'cuda' else 'process max RSS'})")


if __name__ == "__main__":
    main()
