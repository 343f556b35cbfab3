"""How close the VGG16 training step gets to this machine's float32 peak.

    python -m bench.flops --width 0.5 --batch 128

Peak: the best of a few large square matmuls (GFLOP/s). Achieved: the FLOPs of one training step (forward counted by
torch.utils.flop_counter, backward taken as 2x forward) divided by the measured step time.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from bench.common import race, report
from robust_uatt.models.vgg import VGG16


def matmul_peak(size: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(size, size), torch.randn(size, size)
    best = float("inf")
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * size**3 / best / 1e9


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--width", type=float, default=0.5)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default="runs/bench/flops.json")
    args = p.parse_args()
    model = VGG16(width=args.width)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.rand(args.batch, 3, 32, 32), torch.randint(0, 10, (args.batch,))
    with FlopCounterMode(display=False) as counter:
        model(x)
    forward = counter.get_total_flops()

    def step() -> None:
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    seconds = race({"step": step}, args.repeats)["step"]
    achieved = 3 * forward / seconds / 1e9
    peak = matmul_peak()
    rows = [{"measure": "matmul peak (GFLOP/s)", "value": peak},
            {"measure": "VGG16 train step (GFLOP/s)", "value": achieved},
            {"measure": "fraction of peak (target >= 0.6)", "value": achieved / peak},
            {"measure": "train step images/s", "value": args.batch / seconds}]
    report(f"VGG16 width {args.width}, batch {args.batch}: achieved vs peak", rows, args.out,
           {"width": args.width, "batch": args.batch, "forward_flops": forward})


if __name__ == "__main__":
    main()
