"""Multi-digit SVHN (format 1) for Table 3: digitStruct annotations -> 64x64 crops around the digits -> 54x54 crops.

Where the data comes from: SVHN's format 1 (http://ufldl.stanford.edu/housenumbers/: train.tar.gz, test.tar.gz,
extra.tar.gz) unpacked into ``<data dir>/svhn/`` -- or the data directory itself -- so that
``svhn/train/digitStruct.mat`` sits beside ``svhn/train/1.png`` ... (same for ``test/`` and, optionally, ``extra/``).
The data directory is ``--data-dir`` or ``ROBUST_UATT_DATA``. Nothing is downloaded.

``digitStruct.mat`` is a MATLAB v7.3 file, i.e. HDF5: it is read with ``h5py`` (``pip install h5py``; the ``svhn``
extra of robust-uatt). Layout (MATLAB's struct arrays in HDF5): ``/digitStruct/name`` and ``/digitStruct/bbox`` are
(N, 1) arrays of object references; a name points to a (len, 1) array of character codes; a bbox points to a group
with ``label``, ``left``, ``top``, ``width``, ``height``, each (k, 1): the value itself when k = 1, references to
(1, 1) values when k > 1. SVHN writes the digit 0 as label 10.

Protocol (Goodfellow et al. 2014, used by Ba et al. 2015 and the paper): take the smallest box around all digit
boxes, expand it by 30% in x and y (about its centre; clipped to the image), crop, resize to 64x64 (antialiased
bilinear), then cut a 54x54 window: at a random offset per training image (seeded by ``digits_seed``: one crop per
image, fixed for the run), at the centre for test images. Images with more than ``max_digits`` digits are dropped
(SVHN has a handful with 6). Labels are sequences like those of ``multidigit-mnist`` (digits, terminal 10, then -100).
With ``svhn_extra = true`` the training split also reads ``extra/`` (the paper trains on train + extra).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from robust_uatt.data.multidigit import sequence_labels
from robust_uatt.utils.errors import UserError

EXPAND = 0.3  # grow the box around the digits by 30% in x and y (Goodfellow et al. 2014)


def _h5py() -> Any:
    try:
        import h5py
    except ImportError:
        raise UserError("reading SVHN's digitStruct.mat (MATLAB v7.3 = HDF5) needs h5py: pip install h5py "
                        "(or pip install 'robust-uatt[svhn]')") from None
    return h5py


def _values(f: Any, dataset: Any, h5py: Any) -> list[float]:
    """A (k, 1) bbox field: the numbers themselves (k = 1) or references to (1, 1) numbers (k > 1)."""
    if h5py.check_dtype(ref=dataset.dtype) is not None:
        return [float(np.asarray(f[ref][()]).reshape(-1)[0]) for ref in np.asarray(dataset[()]).reshape(-1)]
    return [float(v) for v in np.asarray(dataset[()]).reshape(-1)]


def read_digit_struct(path: Path) -> list[tuple[str, np.ndarray]]:
    """[(file name, boxes (k, 5) float: label, left, top, width, height)] in file order."""
    h5py = _h5py()
    try:
        with h5py.File(path, "r") as f:
            names, bboxes = f["digitStruct/name"], f["digitStruct/bbox"]
            out = []
            for name_ref, box_ref in zip(np.asarray(names[()]).reshape(-1), np.asarray(bboxes[()]).reshape(-1)):
                name = "".join(chr(int(c)) for c in np.asarray(f[name_ref][()]).reshape(-1))
                group = f[box_ref]
                cols = [_values(f, group[key], h5py) for key in ("label", "left", "top", "width", "height")]
                if len({len(c) for c in cols}) != 1:
                    raise ValueError(f"{name}: bbox fields of different lengths")
                out.append((name, np.array(cols, dtype=np.float64).T))
            return out
    except (OSError, KeyError, ValueError, TypeError) as e:
        raise UserError(f"{path}: not a readable SVHN digitStruct.mat ({e.__class__.__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else ''})") from None


def digit_box(boxes: np.ndarray, width: int, height: int) -> tuple[int, int, int, int]:
    """The box around all digits, expanded by ``EXPAND`` about its centre and clipped to the image: (x0, y0, x1, y1)."""
    left, top = boxes[:, 1].min(), boxes[:, 2].min()
    right, bottom = (boxes[:, 1] + boxes[:, 3]).max(), (boxes[:, 2] + boxes[:, 4]).max()
    cx, cy, w, h = (left + right) / 2, (top + bottom) / 2, (right - left) * (1 + EXPAND), (bottom - top) * (1 + EXPAND)
    x0, y0 = max(0, int(round(cx - w / 2))), max(0, int(round(cy - h / 2)))
    x1, y1 = min(width, int(round(cx + w / 2))), min(height, int(round(cy + h / 2)))
    if x1 <= x0 or y1 <= y0:
        raise ValueError("empty digit box")
    return x0, y0, x1, y1


def _folder(root: Path, split: str) -> Path:
    for cand in (root / "svhn" / split, root / split):
        if (cand / "digitStruct.mat").is_file():
            return cand
    raise UserError(f"multidigit-svhn: no {split}/digitStruct.mat under {root / 'svhn'} or {root}. Download SVHN "
                    f"format 1 ({split}.tar.gz from http://ufldl.stanford.edu/housenumbers/), unpack it into "
                    f"{root / 'svhn'}/ and point --data-dir or ROBUST_UATT_DATA at {root}")


def read_folder(folder: Path, canvas: int, max_digits: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """(images uint8 (N, canvas, canvas, 3), digit labels (N, max_digits), counts (N,), images dropped)."""
    from PIL import Image

    images, digits, counts, dropped = [], [], [], 0
    for name, boxes in read_digit_struct(folder / "digitStruct.mat"):
        if not 1 <= len(boxes) <= max_digits:
            dropped += 1
            continue
        try:
            with Image.open(folder / name) as im:
                rgb = im.convert("RGB")
                crop = rgb.crop(digit_box(boxes, *rgb.size)).resize((canvas, canvas), Image.BILINEAR)
        except (OSError, ValueError) as e:
            raise UserError(f"{folder / name}: cannot read this SVHN image ({e.__class__.__name__}: {e})") from None
        images.append(np.asarray(crop, dtype=np.uint8))
        labels = boxes[:, 0].astype(np.int64) % 10  # SVHN writes 0 as 10
        digits.append(np.pad(labels, (0, max_digits - len(labels))))
        counts.append(len(labels))
    if not images:
        raise UserError(f"{folder}: no image with 1 to {max_digits} digits")
    return np.stack(images), np.stack(digits), np.array(counts), dropped


def window(images: torch.Tensor, size: int, train: bool, seed: int) -> torch.Tensor:
    """(N, C, H, W) -> (N, C, size, size): a seeded random window per image (train) or the central one."""
    n, _, h, _ = images.shape
    margin = h - size
    if margin < 0:
        raise UserError(f"multidigit-svhn: crop {size} exceeds the canvas {h}")
    gen = torch.Generator().manual_seed(seed)
    off = torch.randint(0, margin + 1, (n, 2), generator=gen) if train else torch.full((n, 2), margin // 2)
    rows = off[:, :1] + torch.arange(size)  # (N, size)
    cols = off[:, 1:] + torch.arange(size)
    batch = torch.arange(n)[:, None, None]
    out = images.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2).contiguous()


def load_svhn(root: Path, split: str, *, canvas: int, crop: int, max_digits: int, extra: bool,
              seed: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    """The 'train' or 'test' split: (images uint8 (N, 3, crop, crop), labels (N, max_digits + 1), source text)."""
    if split not in ("train", "test"):
        raise UserError(f"unknown split '{split}' (train or test)")
    folders = [_folder(root, split)]
    if split == "train" and extra:
        folders.append(_folder(root, "extra"))
    parts = [read_folder(f, canvas, max_digits) for f in folders]
    x = torch.from_numpy(np.concatenate([p[0] for p in parts])).permute(0, 3, 1, 2).contiguous()
    digits = torch.from_numpy(np.concatenate([p[1] for p in parts]))
    counts = torch.from_numpy(np.concatenate([p[2] for p in parts]))
    x = window(x, crop, split == "train", seed)
    dropped = sum(p[3] for p in parts)
    source = (f"svhn-format1:{'+'.join(str(f) for f in folders)} -> {canvas}x{canvas} around the digits -> "
              f"{'random' if split == 'train' else 'central'} {crop}x{crop} (seed {seed}); {dropped} images with "
              f"more than {max_digits} digits dropped")
    return x, sequence_labels(digits, counts, max_digits), source
