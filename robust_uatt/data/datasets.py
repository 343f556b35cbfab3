"""Datasets as in-memory uint8 tensors, and tensor-side augmentation.

Why in memory: CIFAR-10 is 180 MB as uint8; holding it as one tensor removes per-image Python decoding from the
training loop (torchvision's PIL pipeline is the bottleneck on a 2-core CPU).

Where data comes from, in order:
  (a) the data directory (``--data-dir`` or ``ROBUST_UATT_DATA``) holding either npz files
      ``<name>_{train,test}.npz`` (also under ``<name>/``) with keys ``x`` (uint8 NHW or NHWC), ``y`` and optionally
      ``lossless`` (bool mask, see ../shared/data/cifar10/SOURCE.md), or torchvision's layouts
      (``cifar-10-batches-py/``, ``MNIST/raw``, ``FashionMNIST/raw``), or a folder ``<name>/`` of IDX files
      (``train-images-idx3-ubyte[.gz]`` ...; Debian's dataset-fashion-mnist installs /usr/share/datasets/fashion-mnist);
  (b) torchvision's normal download into the data directory, when the network is reachable.
The test split keeps its original order: RobustBench evaluates the first n test images.
"""

from __future__ import annotations

import gzip
import math
import os
import socket
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from robust_uatt.utils.errors import UserError, unknown_name

DATA_ENV = "ROBUST_UATT_DATA"
DEFAULT_DATA_DIR = Path.home() / ".cache" / "robust_uatt" / "data"


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    shape: tuple[int, int, int]  # C, H, W
    num_classes: int
    torchvision_class: str
    torchvision_dir: str  # folder whose presence means "torchvision layout is here"
    mean: tuple[float, ...]
    std: tuple[float, ...]


DATASETS: dict[str, DatasetInfo] = {
    "cifar10": DatasetInfo("cifar10", (3, 32, 32), 10, "CIFAR10", "cifar-10-batches-py",
                           (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "mnist": DatasetInfo("mnist", (1, 28, 28), 10, "MNIST", "MNIST", (0.1307,), (0.3081,)),
    "fashion-mnist": DatasetInfo("fashion-mnist", (1, 28, 28), 10, "FashionMNIST", "FashionMNIST",
                                 (0.2860,), (0.3530,)),
    # Generated from MNIST in memory (robust_uatt.data.cluttered); the recipe's [data] table sets canvas and clutter.
    "cluttered-mnist": DatasetInfo("cluttered-mnist", (1, 100, 100), 10, "MNIST", "MNIST", (0.0,), (1.0,)),
    # Sequence datasets (Table 3): labels (N, max_digits + 1), classes 0-9 + the terminal 10 (data.multidigit).
    # multidigit-mnist is generated from MNIST in memory; multidigit-svhn reads SVHN's format 1 (data.svhn).
    "multidigit-mnist": DatasetInfo("multidigit-mnist", (1, 54, 54), 11, "MNIST", "MNIST", (0.0,), (1.0,)),
    "multidigit-svhn": DatasetInfo("multidigit-svhn", (3, 54, 54), 11, "", "svhn",
                                   (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
}
DERIVED = {"cluttered-mnist": "mnist", "multidigit-mnist": "mnist"}
SEQUENCE_DATASETS = ("multidigit-mnist", "multidigit-svhn")
_DEFAULT_CANVAS = {"cluttered-mnist": 100, "multidigit-mnist": 64, "multidigit-svhn": 64}


def canvas_size(name: str, params: dict | None) -> int:
    """The generated canvas side: the recipe's [data] canvas, or the dataset's own default when it says 0."""
    return int((params or {}).get("canvas") or _DEFAULT_CANVAS[name])


def dataset_shape(name: str, params: dict | None = None) -> tuple[int, int, int]:
    """(C, H, W) of a dataset; generated ones take their size from the recipe's [data] table."""
    if name == "cluttered-mnist" and params:
        side = canvas_size(name, params)
        return (1, side, side)
    if name in SEQUENCE_DATASETS and params:
        side = int(params.get("crop", 54))
        return (DATASETS[name].shape[0], side, side)
    return DATASETS[name].shape


def sequence_length(name: str, params: dict | None = None) -> int | None:
    """Labels per image of a sequence dataset (max_digits + 1: the digits and the terminal); None for the others."""
    if name not in SEQUENCE_DATASETS:
        return None
    return int((params or {}).get("max_digits", 5)) + 1


@dataclass
class Split:
    """One split: images uint8 (N, C, H, W), labels int64 (N,), where they came from, which pixels are exact."""

    x: torch.Tensor
    y: torch.Tensor
    source: str
    lossless: torch.Tensor | None = None  # bool (N,); None = all exact

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def subset(self, index: slice | torch.Tensor) -> "Split":
        lossless = None if self.lossless is None else self.lossless[index]
        return Split(self.x[index], self.y[index], self.source, lossless)

    def lossless_fraction(self) -> float:
        return 1.0 if self.lossless is None else float(self.lossless.float().mean()) if len(self) else 1.0


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path:
    """The flag wins, then the environment variable, then a per-user cache folder."""
    if data_dir:
        return Path(data_dir).expanduser()
    env = os.environ.get(DATA_ENV)
    return Path(env).expanduser() if env else DEFAULT_DATA_DIR


def _check_arrays(x: np.ndarray, y: np.ndarray, info: DatasetInfo, where: str) -> None:
    c, h, w = info.shape
    if x.dtype != np.uint8:
        extra = ""
        if np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.complexfloating):
            bad = int(x.size - np.isfinite(x).sum()) if x.size else 0
            extra = f", {bad} of them NaN/Inf" if bad else ""
            extra += "; store pixels as uint8 0..255, e.g. np.round(x * 255).astype(np.uint8)"
        raise UserError(f"{where}: images must be uint8, got {x.dtype}{extra}")
    ok = (x.ndim == 3 and c == 1 and x.shape[1:] == (h, w)) or (x.ndim == 4 and x.shape[1:] == (h, w, c))
    if not ok:
        raise UserError(f"{where}: images must have shape (N,{h},{w}{',' + str(c) if c > 1 else ''}), got {x.shape}")
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise UserError(f"{where}: labels must have shape ({x.shape[0]},), got {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise UserError(f"{where}: labels must be integers, got {y.dtype}")
    if y.size and (y.min() < 0 or y.max() >= info.num_classes):
        raise UserError(f"{where}: labels out of range 0..{info.num_classes - 1} (min {y.min()}, max {y.max()})")


def _to_split(x: np.ndarray, y: np.ndarray, info: DatasetInfo, source: str,
              lossless: np.ndarray | None = None) -> Split:
    _check_arrays(x, y, info, source)
    x = np.ascontiguousarray(x)
    xt = torch.from_numpy(x if x.flags.writeable else x.copy())
    xt = xt.unsqueeze(1) if xt.ndim == 3 else xt.permute(0, 3, 1, 2).contiguous()
    mask = None if lossless is None else torch.from_numpy(np.asarray(lossless, dtype=bool))
    return Split(xt, torch.from_numpy(y.astype(np.int64)), source, mask)


def _npz_candidates(root: Path, name: str, split: str) -> list[Path]:
    stems = {name, name.replace("-", "_"), name.replace("-", "")}
    files = [f"{s}_{split}.npz" for s in sorted(stems)]
    return [root / f for f in files] + [root / s / f for s in sorted(stems) for f in files]


def _load_npz(path: Path, info: DatasetInfo) -> Split:
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = {"x", "y"} - set(z.files)
            if missing:
                raise UserError(f"{path}: missing keys {sorted(missing)} (need 'x' uint8 images and 'y' labels)")
            x, y = z["x"], z["y"]
            lossless = z["lossless"] if "lossless" in z.files else None
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - only numpy's zip/npy parsing runs above, and a damaged file can make it
        # fail in many ways (BadZipFile, zlib.error, EOFError, ValueError, SyntaxError from a mangled header, ...)
        first = str(e).splitlines()[0] if str(e) else ""
        raise UserError(f"{path}: cannot read npz file (truncated or corrupt? {e.__class__.__name__}: {first})") \
            from None
    mask_ok = lossless is None or lossless.dtype == np.bool_ or (
        np.issubdtype(lossless.dtype, np.integer) and bool(np.isin(lossless, (0, 1)).all()))
    if lossless is not None and (lossless.shape != y.shape or not mask_ok):
        raise UserError(f"{path}: 'lossless' must be a bool mask of shape {y.shape}, got {lossless.dtype} "
                        f"{lossless.shape}")
    return _to_split(x, y, info, f"npz:{path}", lossless)


def _read_idx(path: Path) -> np.ndarray:
    """An IDX file (MNIST's format): magic 0x0000 08 <ndim>, big-endian dims, then uint8 data."""
    try:
        with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        raise UserError(f"{path}: cannot read IDX file ({e.__class__.__name__}: {e})") from None
    if len(raw) < 4 or raw[:3] != b"\x00\x00\x08" or not 1 <= raw[3] <= 4 or len(raw) < 4 + 4 * raw[3]:
        raise UserError(f"{path}: not a uint8 IDX file")
    ndim = raw[3]
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    expected = math.prod(dims)
    if data.size != expected:
        raise UserError(f"{path}: truncated IDX file ({data.size} of {expected} values)")
    return data.reshape(dims)


def _find_idx(root: Path, name: str, split: str) -> tuple[Path, Path] | None:
    prefix = "train" if split == "train" else "t10k"
    found = []
    for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
        cands = [root / name / f"{prefix}-{kind}{ext}" for ext in ("", ".gz")]
        hit = next((c for c in cands if c.is_file()), None)
        if hit is None:
            return None
        found.append(hit)
    return found[0], found[1]


def _load_torchvision(root: Path, info: DatasetInfo, split: str, download: bool) -> Split:
    import torchvision.datasets as tvd

    cls = getattr(tvd, info.torchvision_class)
    ds = cls(str(root), train=(split == "train"), download=download)
    x = np.asarray(ds.data.numpy() if torch.is_tensor(ds.data) else ds.data)
    y = np.asarray(ds.targets.numpy() if torch.is_tensor(ds.targets) else ds.targets)
    return _to_split(x.astype(np.uint8), y, info, f"torchvision:{root / info.torchvision_dir}")


def load_split(name: str, split: str, data_dir: str | os.PathLike | None = None, download: bool = True,
               params: dict | None = None) -> Split:
    """Load ``split`` ('train' or 'test') of dataset ``name`` as uint8 tensors held in memory.

    ``params`` is the recipe's [data] table (only generated datasets read it).
    """
    if name not in DATASETS:
        raise unknown_name("dataset", name, DATASETS)
    if name == "multidigit-svhn":
        return _load_svhn(resolve_data_dir(data_dir), split, params or {})
    if name in DERIVED:
        return _generate(name, split, load_split(DERIVED[name], split, data_dir, download), params or {})
    if split not in ("train", "test"):
        raise UserError(f"unknown split '{split}' (train or test)")
    info = DATASETS[name]
    root = resolve_data_dir(data_dir)
    for path in _npz_candidates(root, name, split):
        if path.is_file():
            return _load_npz(path, info)
    idx = _find_idx(root, name, split)
    if idx is not None:
        return _to_split(_read_idx(idx[0]), _read_idx(idx[1]), info, f"idx:{idx[0].parent}")
    if (root / info.torchvision_dir).is_dir():
        try:
            return _load_torchvision(root, info, split, download=False)
        except RuntimeError:
            pass  # incomplete layout: fall through to the download
        except (ValueError, OSError, EOFError, AssertionError, IndexError) as e:  # present but unreadable
            raise UserError(f"{root / info.torchvision_dir}: cannot read torchvision's {info.torchvision_class} files "
                            f"({e.__class__.__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    if download:
        try:
            return _download(root, info, split)
        except UserError:
            raise
        except Exception as e:  # network errors come in many types (URLError, socket.timeout, HTTPError, ...)
            reason = f"download failed: {e.__class__.__name__}: {e}"
    else:
        reason = "download disabled"
    raise UserError(
        f"{name} {split} data not found in {root} ({reason}). Either point --data-dir or {DATA_ENV} at a folder "
        f"holding {name}_{split}.npz or torchvision's {info.torchvision_dir}/ layout, or let torchvision download "
        f"it there (needs network access and a writable folder)."
    )


def _generate(name: str, split: str, base: Split, params: dict) -> Split:
    if name == "multidigit-mnist":
        return _generate_multidigit(split, base, params)
    from robust_uatt.data.cluttered import make_cluttered

    canvas, pieces = canvas_size(name, params), int(params.get("pieces", 10))
    piece_size = int(params.get("piece_size", 8))
    # The test split gets its own seed stream, so train and test clutter never coincide.
    seed = int(params.get("clutter_seed", 0)) * 2 + (split == "test")
    x, y = make_cluttered(base.x[:, 0], base.y, canvas=canvas, pieces=pieces, piece_size=piece_size, seed=seed)
    source = f"{base.source} -> cluttered(canvas={canvas}, pieces={pieces}, piece={piece_size}, seed={seed})"
    return Split(x.unsqueeze(1).contiguous(), y.long(), source, base.lossless)


def _load_svhn(root: Path, split: str, params: dict) -> Split:
    from robust_uatt.data.svhn import load_svhn

    x, y, source = load_svhn(root, split, canvas=canvas_size("multidigit-svhn", params),
                             crop=int(params.get("crop", 54)), max_digits=int(params.get("max_digits", 5)),
                             extra=bool(params.get("svhn_extra", False)),
                             seed=int(params.get("digits_seed", 0)) * 2 + (split == "test"))
    return Split(x, y, source)


def _generate_multidigit(split: str, base: Split, params: dict) -> Split:
    """As many multi-digit images as the MNIST split has digits, drawn from that split's digits only."""
    from robust_uatt.data.multidigit import make_multidigit

    canvas, crop = canvas_size("multidigit-mnist", params), int(params.get("crop", 54))
    lo, hi = int(params.get("min_digits", 1)), int(params.get("max_digits", 5))
    seed = int(params.get("digits_seed", 0)) * 2 + (split == "test")  # train and test never share a layout stream
    try:
        x, y = make_multidigit(base.x[:, 0], base.y, n=len(base), canvas=canvas, crop=crop, min_digits=lo,
                               max_digits=hi, train=(split == "train"), seed=seed)
    except ValueError as e:
        raise UserError(f"multidigit-mnist: {e}") from None
    source = (f"{base.source} -> multidigit(canvas={canvas}, crop={crop}, digits={lo}..{hi}, "
              f"{'random' if split == 'train' else 'central'} crops, seed={seed})")
    return Split(x.unsqueeze(1).contiguous(), y, source)


def _download(root: Path, info: DatasetInfo, split: str) -> Split:
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create data directory {root}: {e.strerror}") from None
    if not os.access(root, os.W_OK):
        raise OSError(f"{root} is not writable")
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(30)
    try:
        return _load_torchvision(root, info, split, download=True)
    finally:
        socket.setdefaulttimeout(old)


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float32 [0, 1] (the attack space).

    The loaders only ever hold uint8 images, so the model never sees NaN/Inf pixels; a float tensor is accepted
    only when it already is a finite image in [0, 1] (anything else is a bug upstream, not a user input).
    """
    if x.dtype == torch.uint8:
        return x.float().div_(255.0)
    if not x.is_floating_point():
        raise TypeError(f"images must be uint8 (or float in [0, 1]), got {x.dtype}")
    if x.numel() and not bool(torch.isfinite(x).all() and x.min() >= 0 and x.max() <= 1):
        raise ValueError("float images must be finite and lie in [0, 1]")
    return x.float().clone()


def augment_crop_flip(x: torch.Tensor, generator: torch.Generator, padding: int = 4) -> torch.Tensor:
    """Random crop with zero padding + horizontal flip on a whole uint8/float batch at once (seeded, no Python loop).

    Each image gets its own offset; the crop is one gather through advanced indexing.
    """
    b, c, h, w = x.shape
    padded = torch.nn.functional.pad(x, (padding,) * 4)
    oy = torch.randint(0, 2 * padding + 1, (b,), generator=generator)
    ox = torch.randint(0, 2 * padding + 1, (b,), generator=generator)
    flip = torch.rand(b, generator=generator) < 0.5
    rows = (oy[:, None] + torch.arange(h)).to(x.device)  # (B, H)
    cols = ox[:, None] + torch.arange(w)  # (B, W)
    cols = torch.where(flip[:, None], cols.flip(1), cols).to(x.device)
    batch = torch.arange(b, device=x.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
    return out.permute(0, 3, 1, 2).contiguous()
