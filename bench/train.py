"""Training throughput: our cifar10-vgg step (uint8 tensors in memory, tensor augmentation, channels_last VGG) vs
the plain baseline a user would write (torchvision vgg16_bn features + DataLoader over PIL images with torchvision
transforms), same width, batch, optimizer and data.

    python -m bench.train --width 1.0 --batch 128 --steps 6 [--profile]

Steps alternate (plain, ours, plain, ours, ...) so load drifts hit both alike; each figure is the best step of
``--steps`` (load only adds time). Both use the same SGD settings; ours builds its optimizer with the training loop's
``make_optimizer`` (fused update). The plain loader's workers refill the batch plain just took while ours' step runs,
a small bias against ours. ``--profile`` prints where one step of each spends its time (torch.profiler, self CPU).

The baseline reads CIFAR-10 exactly as torchvision's CIFAR10 dataset does (uint8 HWC array -> PIL image ->
RandomCrop(32, 4) -> RandomHorizontalFlip -> ToTensor -> Normalize); here the array comes from the npz data
directory, since torchvision's download is not reachable offline.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torchvision import transforms
from torchvision.models.vgg import make_layers

from bench.common import race, report
from robust_uatt.data.datasets import augment_crop_flip, load_split, to_float
from robust_uatt.models.vgg import CIFAR10_MEAN, CIFAR10_STD, VGG16, scaled_cfg
from robust_uatt.training.loop import make_optimizer


class PilCifar(torch.utils.data.Dataset):
    def __init__(self, x_hwc, y) -> None:
        self.x, self.y = x_hwc, y
        self.tf = transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
                                      transforms.ToTensor(), transforms.Normalize(CIFAR10_MEAN, CIFAR10_STD)])

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i):
        return self.tf(Image.fromarray(self.x[i])), int(self.y[i])


def profile_step(name: str, step, batches) -> None:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step(*next(batches))
    print(f"--- {name}: one step, self CPU time by op")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=44))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=6, help="timed steps of each pipeline (interleaved; best counts)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--profile", action="store_true")
    p.add_argument("--out", default="runs/bench/train.json")
    args = p.parse_args()
    torch.manual_seed(0)
    train = load_split("cifar10", "train", args.data_dir, download=False)
    sgd = {"optimizer": "sgd", "lr": 0.01, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4}

    ours = VGG16(width=args.width)
    opt = make_optimizer(ours, sgd)
    gen = torch.Generator().manual_seed(0)

    def our_batches():
        while True:
            perm = torch.randperm(len(train), generator=gen)
            for i in range(0, len(train) - args.batch + 1, args.batch):
                idx = perm[i:i + args.batch]
                yield to_float(augment_crop_flip(train.x[idx], gen)), train.y[idx]

    def our_step(xb, yb):
        loss = F.cross_entropy(ours(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    plain = nn.Sequential(make_layers(scaled_cfg(args.width), batch_norm=True), nn.Flatten(),
                          nn.Linear(scaled_cfg(args.width)[-2], 10))
    opt2 = torch.optim.SGD(plain.parameters(), lr=sgd["lr"], momentum=sgd["momentum"], nesterov=sgd["nesterov"],
                           weight_decay=sgd["weight_decay"])
    loader = torch.utils.data.DataLoader(PilCifar(train.x.permute(0, 2, 3, 1).numpy(), train.y.numpy()),
                                         batch_size=args.batch, shuffle=True, num_workers=args.workers)

    def plain_step(xb, yb):
        loss = F.cross_entropy(plain(xb), yb)
        opt2.zero_grad(set_to_none=True)
        loss.backward()
        opt2.step()

    plain_batches, ours_batches = iter(loader), our_batches()
    if args.profile:
        profile_step("plain", plain_step, plain_batches)
        profile_step("ours", our_step, ours_batches)
    # a step of ours includes making its batch (augmentation on tensors); plain's batches come from its workers
    seconds = race({"plain": lambda: plain_step(*next(plain_batches)), "ours": lambda: our_step(*next(ours_batches))},
                   args.steps, warmup=2, best=True)
    ips_plain, ips_ours = args.batch / seconds["plain"], args.batch / seconds["ours"]
    rows = [{"pipeline": "plain: torchvision vgg16_bn + DataLoader(PIL transforms)", "images/s": ips_plain},
            {"pipeline": "robust-uatt: uint8 tensors + tensor augmentation + channels_last", "images/s": ips_ours},
            {"pipeline": "ratio (target >= 1.0 at every width)", "images/s": ips_ours / ips_plain}]
    report(f"cifar10-vgg training throughput, width {args.width}, batch {args.batch}", rows, args.out,
           {"width": args.width, "batch": args.batch, "steps": args.steps, "workers": args.workers,
            "timing": "interleaved, best step of --steps"})


if __name__ == "__main__":
    main()
