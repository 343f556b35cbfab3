"""DDP training throughput: images/s of the training loop's own ``train_step`` at one global batch, with 1 process
and with W processes (gloo on the CPU, NCCL on CUDA), each process given the same threads (default 1), launched
here the way torchrun launches them. Repeated alternately (1, W, 1, W, ...) and the best of each kept, so that load
drifts hit both alike.

    python -m bench.distributed --recipe cifar10-vgg --preset smoke --world 2 --steps 5 --repeats 2

On a CPU the ratio says how much a second process on idle cores buys; on one machine with W GPUs (``--device
cuda``) the same command times NCCL DDP with no code change.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import report


def worker(args: argparse.Namespace) -> None:
    """One rank: build the run as the loop does, wrap it in DDP when W > 1, time ``--steps`` steps after 2 warm-up
    steps; rank 0 prints {"images_per_s": ...} on stdout."""
    import torch
    from rich.console import Console

    from robust_uatt.models.zoo import create_model, load_recipe
    from robust_uatt.training.checkpoint import TrainState
    from robust_uatt.training.loop import Run, make_optimizer, split_data, train_step, wrap_ddp
    from robust_uatt.utils import distributed
    from robust_uatt.utils.runtime import resolve_device, seed_all

    torch.set_num_threads(args.threads)
    recipe = load_recipe(args.recipe, args.preset)
    where = distributed.launch()
    device = distributed.device_for(resolve_device(args.device), where)
    distributed.init(device)
    splits = split_data(recipe, args.data_dir, download=False)
    seed_all(0)
    model = create_model(recipe).to(device)
    state = TrainState(model, make_optimizer(model, recipe.train), torch.Generator().manual_seed(0))
    run = Run(recipe, Path(tempfile.gettempdir()), 0, device, splits, Console(quiet=True), None, where)
    if where.distributed:
        wrap_ddp(run, state)
    batch, train_set = recipe.train["batch_size"], splits[0]
    perm = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(0))

    def step(i: int) -> None:
        train_step(run, state, train_set, perm[(i * batch) % (len(perm) - batch):][:batch], i)

    for i in range(2):
        step(i)
    distributed.barrier("warm-up")
    t0 = time.perf_counter()
    for i in range(2, 2 + args.steps):
        step(i)
    if device.type == "cuda":
        torch.cuda.synchronize()
    distributed.barrier("timing")
    seconds = time.perf_counter() - t0
    if where.is_main:
        print(json.dumps({"images_per_s": args.steps * batch / seconds}))
    distributed.shutdown()


def launch(args: argparse.Namespace, world: int) -> float:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    procs = []
    for rank in range(world):
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "RANK": str(rank), "LOCAL_RANK": str(rank),
               "WORLD_SIZE": str(world), "LOCAL_WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": port}
        if world == 1:
            for var in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE"):
                env.pop(var)
        procs.append(subprocess.Popen([sys.executable, "-m", "bench.distributed", "--worker", *sys.argv[1:]],
                                      env=env, stdout=subprocess.PIPE, text=True))
    outs = [p.communicate()[0] for p in procs]
    if any(p.returncode for p in procs):
        raise SystemExit(f"a worker failed (world {world})")
    return float(json.loads(outs[0].strip().splitlines()[-1])["images_per_s"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", default="cifar10-vgg")
    p.add_argument("--preset", default="smoke")
    p.add_argument("--world", type=int, default=2, help="processes of the distributed side")
    p.add_argument("--steps", type=int, default=5, help="timed steps per launch (after 2 warm-up steps)")
    p.add_argument("--repeats", type=int, default=2, help="launches per side, alternating; the best is kept")
    p.add_argument("--threads", type=int, default=1, help="threads per process")
    p.add_argument("--device", default="cpu")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", default="runs/bench/distributed.json")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return
    best: dict[int, float] = {1: 0.0, args.world: 0.0}
    for _ in range(args.repeats):
        for world in (1, args.world):
            best[world] = max(best[world], launch(args, world))
    rows = [{"processes": w, "threads each": args.threads, "images/s": v, "vs 1 process": v / best[1]}
            for w, v in best.items()]
    report(f"DDP training throughput: {args.recipe} ({args.preset}), global batch fixed", rows, args.out,
           {"recipe": args.recipe, "preset": args.preset, "steps": args.steps, "repeats": args.repeats,
            "device": args.device})


if __name__ == "__main__":
    main()
