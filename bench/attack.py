"""Our PGD loop vs torchattacks.PGD on the same VGG16, batch, points and seed, and both against the machine's limit.

    python -m bench.attack --model runs/cifar10-vgg/cpu-seed0 --n 256 --batch 256 --steps 30 --eps 8/255

Every attack below runs ``--repeats`` times, interleaved (A, B, C, A, B, C, ...) with a float32 matmul that measures
this machine's practical peak under the same load; each figure is the best of its runs (load only adds time).
- torchattacks.PGD on the model as trained (the baseline a user would write);
- ours at equal work (early stop off: every step on every point) on the model as trained and on the attack graph
  the harness uses (robust_uatt.evaluation.attack_graph: BatchNorm folded into the convolutions, parameters
  frozen); robust accuracies must agree within noise (same update rule, different random starts);
- ours to the result (the harness's way: a point is dropped as soon as it is misclassified), on the attack graph.
Robust accuracy is always judged on the original model. The limit fraction: FLOPs of one PGD step (forward + input
gradient, counted by torch.utils.flop_counter on the real step) x steps x points / seconds, over the matmul peak.
Peak memory of the attack at the given batch size is reported from the process's max RSS (CPU) or CUDA's counter.
"""

from __future__ import annotations

import argparse
import resource
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from bench.common import matmul_flops, race, report
from robust_uatt.attacks.base import per_example_uniform
from robust_uatt.attacks.pgd import pgd
from robust_uatt.data.datasets import load_split, to_float
from robust_uatt.evaluation.attack_graph import attack_graph
from robust_uatt.evaluation.harness import frozen_parameters
from robust_uatt.models.zoo import load_trained
from robust_uatt.utils.eps import parse_eps
from robust_uatt.utils.runtime import configure, resolve_device


def step_flops(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """FLOPs of one PGD step per image: forward + gradient w.r.t. the input (parameters frozen, as in the attack)."""
    xg = x.clone().requires_grad_(True)
    with frozen_parameters(model), FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(xg), y, reduction="sum").backward()  # (the counter's hooks reject autograd.grad)
    return counter.get_total_flops() / len(x)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", required=True)
    p.add_argument("--n", type=int, default=256)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--eps", default="8/255")
    p.add_argument("--repeats", type=int, default=3, help="runs of each attack, interleaved; the best counts")
    p.add_argument("--device", default="auto")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", default="runs/bench/attack.json")
    args = p.parse_args()
    import torchattacks

    device = resolve_device(args.device)
    configure(device)
    eps = parse_eps(args.eps)
    alpha = 2.5 * eps / args.steps
    model, recipe, weights = load_trained(args.model)
    model = model.to(device).eval()
    test = load_split(recipe.dataset, "test", args.data_dir, download=False)
    x = to_float(test.x[:args.n]).to(device)
    y = test.y[:args.n].to(device)
    index = torch.arange(args.n)
    graph = attack_graph(model, x[:args.batch])
    work = step_flops(graph.module, x[:args.batch], y[:args.batch]) * args.steps * args.n
    accuracy: dict[str, float] = {}

    def judged(name: str, adv: torch.Tensor) -> None:
        with torch.inference_mode():  # verdicts on the original model, whatever graph the attack ran on
            accuracy[name] = float((model(adv).argmax(1) == y).float().mean())

    def ours(name: str, net: nn.Module, early_stop: bool) -> Callable[[], None]:
        def run() -> None:
            adv = []
            with frozen_parameters(net):
                for s in range(0, args.n, args.batch):
                    sl = slice(s, s + args.batch)
                    init = per_example_uniform(x[sl], index[sl], eps, seed=0)
                    adv.append(pgd(net, x[sl], y[sl], eps=eps, alpha=alpha, steps=args.steps, init=init,
                                   early_stop=early_stop, keep="best" if early_stop else "last"))
            judged(name, torch.cat(adv))
        return run

    def theirs() -> None:
        torch.manual_seed(0)
        attack = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=args.steps, random_start=True)
        judged("torchattacks", torch.cat([attack(x[s:s + args.batch], y[s:s + args.batch])
                                          for s in range(0, args.n, args.batch)]))

    matmul, matmul_work = matmul_flops(device)
    runs = {"torchattacks": theirs, "ours, as trained": ours("ours, as trained", model, False),
            "ours, attack graph": ours("ours, attack graph", graph.module, False),
            "ours, to the result": ours("ours, to the result", graph.module, True), "matmul": matmul}
    seconds = race(runs, args.repeats, warmup=1, best=True)
    peak = matmul_work / seconds.pop("matmul")
    rows = []
    for name, s in seconds.items():
        equal_work = name != "ours, to the result"
        rows.append({"attack": name, "images/s": args.n / s, "robust acc": accuracy[name],
                     "vs torchattacks": seconds["torchattacks"] / s,
                     "fraction of limit": work / s / peak if equal_work else float("nan")})
    mem = (torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda"
           else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    report(f"PGD-{args.steps} on {recipe.name} ({weights}), n={args.n}, batch {args.batch}, eps {args.eps}, "
           f"best of {args.repeats}", rows, args.out,
           {"model": str(weights), "n": args.n, "batch": args.batch, "steps": args.steps, "eps": eps,
            "repeats": args.repeats, "attack_graph": graph.describe(), "step_gflop_per_image": work / 1e9 / args.steps
            / args.n, "matmul_peak_gflops": peak / 1e9, "peak_memory_mib": mem, "device": str(device)})
    print(f"attack graph: {graph.kind} ({graph.folded} Conv+BatchNorm folded; logits max |diff| "
          f"{graph.max_abs_diff} <= {graph.tolerance}){' ' + graph.reason if graph.reason else ''}")
    print(f"limit: matmul peak {peak / 1e9:.0f} GFLOP/s; one PGD step {work / args.steps / args.n / 1e6:.1f} "
          f"MFLOP per image (forward + input gradient)")
    print(f"peak memory: {mem:.0f} MiB ({'CUDA allocated' if device.type == 'cuda' else 'process max RSS'})")


if __name__ == "__main__":
    main()
