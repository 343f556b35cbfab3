from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from robust_uatt.data.datasets import augment_crop_flip, load_split, resolve_data_dir
from robust_uatt.utils.errors import UserError


def test_npz_loads_as_uint8_nchw_in_original_order(data_dir: Path) -> None:
    split = load_split("cifar10", "test", data_dir, download=False)
    raw = np.load(data_dir / "cifar10_test.npz")
    assert split.x.dtype == torch.uint8 and split.x.shape == (200, 3, 32, 32)
    assert split.y.dtype == torch.int64
    assert torch.equal(split.x, torch.from_numpy(raw["x"]).permute(0, 3, 1, 2))
    assert torch.equal(split.y, torch.from_numpy(raw["y"].astype(np.int64)))
    assert split.lossless is not None and split.lossless_fraction() == pytest.approx(0.5)
    assert split.subset(slice(0, 100)).lossless_fraction() == 1.0


def test_grayscale_npz_gets_a_channel_axis(data_dir: Path) -> None:
    split = load_split("mnist", "train", data_dir, download=False)
    assert split.x.shape == (7000, 1, 28, 28) and split.lossless is None


def test_npz_in_a_dataset_subfolder(tmp_path: Path, data_dir: Path) -> None:
    (tmp_path / "cifar10").mkdir()
    (tmp_path / "cifar10" / "cifar10_test.npz").write_bytes((data_dir / "cifar10_test.npz").read_bytes())
    assert len(load_split("cifar10", "test", tmp_path, download=False)) == 200


def test_data_dir_from_environment(monkeypatch: pytest.MonkeyPatch, data_dir: Path) -> None:
    monkeypatch.setenv("ROBUST_UATT_DATA", str(data_dir))
    assert resolve_data_dir(None) == data_dir
    assert resolve_data_dir("/elsewhere") == Path("/elsewhere")
    assert len(load_split("mnist", "test", download=False)) == 200


def _write_idx(path: Path, array: np.ndarray, compress: bool) -> None:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    (gzip.open(path.with_name(path.name + ".gz"), "wb") if compress else open(path, "wb")).write(data)


@pytest.mark.parametrize("layout", ["torchvision", "idx-gz"])
def test_mnist_style_layouts(tmp_path: Path, layout: str) -> None:
    x = np.random.default_rng(0).integers(0, 256, (30, 28, 28), dtype=np.uint8)
    y = np.arange(30) % 10
    folder = tmp_path / ("FashionMNIST/raw" if layout == "torchvision" else "fashion-mnist")
    folder.mkdir(parents=True)
    for prefix in ("train", "t10k"):
        _write_idx(folder / f"{prefix}-images-idx3-ubyte", x, layout == "idx-gz")
        _write_idx(folder / f"{prefix}-labels-idx1-ubyte", y, layout == "idx-gz")
    split = load_split("fashion-mnist", "test", tmp_path, download=False)
    assert split.x.shape == (30, 1, 28, 28)
    assert torch.equal(split.x[:, 0], torch.from_numpy(x)) and torch.equal(split.y, torch.from_numpy(y))


def test_missing_data_names_both_options(tmp_path: Path) -> None:
    with pytest.raises(UserError) as e:
        load_split("cifar10", "test", tmp_path, download=False)
    msg = str(e.value)
    assert "ROBUST_UATT_DATA" in msg and "--data-dir" in msg and "download" in msg


@pytest.mark.parametrize("case", ["labels", "dtype", "shape", "keys", "truncated", "lossless"])
def test_bad_npz_is_a_user_error(tmp_path: Path, case: str) -> None:
    x = np.zeros((4, 32, 32, 3), np.uint8)
    y = np.zeros(4, np.int64)
    path = tmp_path / "cifar10_test.npz"
    if case == "labels":
        np.savez(path, x=x, y=np.array([0, 1, 2, 10]))
    elif case == "dtype":
        np.savez(path, x=x.astype(np.float32), y=y)
    elif case == "shape":
        np.savez(path, x=x[:, :16], y=y)
    elif case == "keys":
        np.savez(path, images=x, y=y)
    elif case == "truncated":
        np.savez(path, x=x, y=y)
        path.write_bytes(path.read_bytes()[:100])
    else:
        np.savez(path, x=x, y=y, lossless=np.ones(3, bool))
    with pytest.raises(UserError, match="cifar10_test.npz"):
        load_split("cifar10", "test", tmp_path, download=False)


def test_augmentation_is_seeded_and_is_a_shifted_crop_or_its_mirror() -> None:
    x = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    a = augment_crop_flip(x, torch.Generator().manual_seed(3))
    b = augment_crop_flip(x, torch.Generator().manual_seed(3))
    c = augment_crop_flip(x, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c) and a.dtype == torch.uint8
    padded = torch.nn.functional.pad(x, (4,) * 4)
    for i in range(16):
        crops = [padded[i, :, r:r + 32, s:s + 32] for r in range(9) for s in range(9)]
        assert any(torch.equal(a[i], cr) or torch.equal(a[i], cr.flip(2)) for cr in crops)


def test_failed_download_is_a_user_error_naming_both_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import urllib.error

    import robust_uatt.data.datasets as data_mod

    def offline(root, info, split, download):
        assert download  # only the download attempt reaches here: the folder holds no data
        raise urllib.error.URLError("network unreachable")

    monkeypatch.setattr(data_mod, "_load_torchvision", offline)
    with pytest.raises(UserError) as e:
        load_split("mnist", "train", tmp_path / "new", download=True)
    assert "download failed" in str(e.value) and "ROBUST_UATT_DATA" in str(e.value)
    assert (tmp_path / "new").is_dir()  # torchvision would have downloaded into the data directory
