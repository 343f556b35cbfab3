"""Training throughput: our cifar10-vgg step (uint8 tensors in memory, tensor augmentation, channels_last VGG) vs
the plain baseline a user would write (torchvision vgg16_bn features + DataLoader over PIL images with torchvision
transforms), same width, batch, optimizer and data.

    python bench/train.py --width 1.0 --batch 128 --steps 10

The baseline reads CIFAR-10 exactly as torchvision's CIFAR10 dataset does (uint8 HWC array -> PIL image ->
RandomCrop(32, 4) -> RandomHorizontalFlip -> ToTensor -> Normalize); here the array comes from the npz data
directory, since torchvision's download is not reachable offline.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torchvision import transforms
from torchvision.models.vgg import make_layers

from bench.common import report
from robust_uatt.data.datasets import augment_crop_flip, load_split, to_float
from robust_uatt.models.vgg import CIFAR10_MEAN, CIFAR10_STD, VGG16, scaled_cfg


class PilCifar(torch.utils.data.Dataset):
    def __init__(self, x_hwc, y) -> None:
        self.x, self.y = x_hwc, y
        self.tf = transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
                                      transforms.ToTensor(), transforms.Normalize(CIFAR10_MEAN, CIFAR10_STD)])

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i):
        return self.tf(Image.fromarray(self.x[i])), int(self.y[i])


def timed(step, batches, steps: int, batch: int) -> float:
    it = iter(batches)
    for _ in range(2):
        step(*next(it))
    t0 = time.perf_counter()
    for _ in range(steps):
        step(*next(it))
    return steps * batch / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", default="runs/bench/train.json")
    args = p.parse_args()
    torch.manual_seed(0)
    train = load_split("cifar10", "train", args.data_dir, download=False)
    n = args.batch * (args.steps + 2)

    ours = VGG16(width=args.width)
    opt = torch.optim.SGD(ours.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
    gen = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(train), generator=gen)

    def our_batches():
        for i in range(0, n, args.batch):
            idx = perm[i:i + args.batch]
            yield to_float(augment_crop_flip(train.x[idx], gen)), train.y[idx]

    def our_step(xb, yb):
        loss = F.cross_entropy(ours(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    plain = nn.Sequential(make_layers(scaled_cfg(args.width), batch_norm=True), nn.Flatten(),
                          nn.Linear(scaled_cfg(args.width)[-2], 10))
    opt2 = torch.optim.SGD(plain.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
    loader = torch.utils.data.DataLoader(PilCifar(train.x.permute(0, 2, 3, 1).numpy(), train.y.numpy()),
                                         batch_size=args.batch, shuffle=True, num_workers=args.workers)

    def plain_step(xb, yb):
        loss = F.cross_entropy(plain(xb), yb)
        opt2.zero_grad(set_to_none=True)
        loss.backward()
        opt2.step()

    ips_plain = timed(plain_step, loader, args.steps, args.batch)
    ips_ours = timed(our_step, our_batches(), args.steps, args.batch)
    rows = [{"pipeline": "plain: torchvision vgg16_bn + DataLoader(PIL transforms)", "images/s": ips_plain},
            {"pipeline": "robust-uatt: uint8 tensors + tensor augmentation + channels_last", "images/s": ips_ours},
            {"pipeline": "ratio (target >= 1.3)", "images/s": ips_ours / ips_plain}]
    report(f"cifar10-vgg training throughput, width {args.width}, batch {args.batch}", rows, args.out,
           {"width": args.width, "batch": args.batch, "steps": args.steps, "workers": args.workers})


if __name__ == "__main__":
    main()
