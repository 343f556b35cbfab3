"""Multi-digit SVHN loader on a small format-1 folder written here (digitStruct.mat as MATLAB v7.3 writes it: HDF5)."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from robust_uatt.data.datasets import load_split
from robust_uatt.data.multidigit import IGNORE, TERMINAL
from robust_uatt.data.svhn import digit_box, read_digit_struct
from robust_uatt.utils.errors import UserError

PARAMS = {"canvas": 0, "crop": 54, "max_digits": 5, "digits_seed": 0, "svhn_extra": False}


def write_digit_struct(path: Path, records: list[tuple[str, list[list[float]]]]) -> None:
    """MATLAB's layout: /digitStruct/{name,bbox} (N, 1) references; names as (len, 1) uint16 codes; a bbox group of
    (k, 1) fields, the value itself for one digit and references to (1, 1) values for several (data under #refs#)."""
    with h5py.File(path, "w") as f:
        refs = f.create_group("#refs#")
        names, boxes = [], []
        for i, (name, rows) in enumerate(records):
            names.append(refs.create_dataset(f"n{i}", data=np.array([[ord(c)] for c in name], np.uint16)).ref)
            group = refs.create_group(f"b{i}")
            for j, key in enumerate(("label", "left", "top", "width", "height")):
                vals = [row[j] for row in rows]
                if len(vals) == 1:
                    group.create_dataset(key, data=np.array([[vals[0]]], np.float64))
                else:
                    rr = [refs.create_dataset(f"b{i}{key}{k}", data=np.array([[v]], np.float64)).ref
                          for k, v in enumerate(vals)]
                    group.create_dataset(key, data=np.array(rr, dtype=h5py.ref_dtype).reshape(-1, 1))
            boxes.append(group.ref)
        ds = f.create_group("digitStruct")
        ds.create_dataset("name", data=np.array(names, dtype=h5py.ref_dtype).reshape(-1, 1))
        ds.create_dataset("bbox", data=np.array(boxes, dtype=h5py.ref_dtype).reshape(-1, 1))


# (size, digit boxes: label (10 = digit 0), left, top, width, height)
IMAGES = [
    ((90, 60), [[1, 20, 15, 12, 30], [10, 34, 15, 12, 30]]),  # "10"
    ((70, 50), [[7, 25, 10, 16, 28]]),  # "7"
    ((120, 60), [[2, 10, 10, 14, 30], [3, 25, 10, 14, 30], [4, 40, 12, 14, 30]]),  # "234"
    ((150, 40), [[1, 5 + 18 * k, 5, 15, 25] for k in range(6)]),  # six digits: dropped
]


def make_folder(root: Path, split: str) -> Path:
    folder = root / "svhn" / split
    folder.mkdir(parents=True)
    records = []
    for i, (size, rows) in enumerate(IMAGES):
        img = np.zeros((size[1], size[0], 3), np.uint8)
        x0, y0 = min(r[1] for r in rows), min(r[2] for r in rows)
        x1, y1 = max(r[1] + r[3] for r in rows), max(r[2] + r[4] for r in rows)
        img[int(y0):int(y1), int(x0):int(x1)] = 255  # the digits' union box white, the rest black
        Image.fromarray(img).save(folder / f"{i + 1}.png")
        records.append((f"{i + 1}.png", rows))
    write_digit_struct(folder / "digitStruct.mat", records)
    return folder


def test_reads_the_annotations(tmp_path: Path) -> None:
    folder = make_folder(tmp_path, "test")
    records = read_digit_struct(folder / "digitStruct.mat")
    assert [r[0] for r in records] == ["1.png", "2.png", "3.png", "4.png"]
    assert records[0][1].tolist() == [[1, 20, 15, 12, 30], [10, 34, 15, 12, 30]]
    assert records[1][1].shape == (1, 5) and records[3][1].shape == (6, 5)


def test_loads_crops_and_labels(tmp_path: Path) -> None:
    make_folder(tmp_path, "test")
    split = load_split("multidigit-svhn", "test", tmp_path, download=False, params=PARAMS)
    assert split.x.shape == (3, 3, 54, 54) and split.x.dtype == torch.uint8  # the six-digit image is dropped
    assert split.y.tolist() == [[1, 0, TERMINAL, IGNORE, IGNORE, IGNORE], [7, TERMINAL] + [IGNORE] * 4,
                                [2, 3, 4, TERMINAL, IGNORE, IGNORE]]
    assert "1 images with more than 5 digits dropped" in split.source
    # the digits' box, grown by 30% and resized to 64, fills the centre; the 5-px central crop keeps a black rim
    gray = split.x.float().mean(1)
    assert (gray[:, 27, 27] > 200).all() and (gray[:, 0, 0] < 30).all() and (gray[:, 53, 53] < 30).all()


def test_train_crops_are_seeded(tmp_path: Path) -> None:
    make_folder(tmp_path, "train")
    a = load_split("multidigit-svhn", "train", tmp_path, download=False, params=PARAMS)
    b = load_split("multidigit-svhn", "train", tmp_path, download=False, params=PARAMS)
    c = load_split("multidigit-svhn", "train", tmp_path, download=False, params={**PARAMS, "digits_seed": 1})
    assert torch.equal(a.x, b.x) and torch.equal(a.y, c.y) and not torch.equal(a.x, c.x)


def test_digit_box_expands_by_30_percent_and_clips() -> None:
    assert digit_box(np.array([[1, 40, 40, 20, 10]]), 200, 200) == (37, 38, 63, 52)
    assert digit_box(np.array([[1, 0, 0, 20, 10]]), 200, 200)[:2] == (0, 0)


def test_missing_or_corrupt_data_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="format 1"):
        load_split("multidigit-svhn", "test", tmp_path, download=False, params=PARAMS)
    folder = tmp_path / "svhn" / "test"
    folder.mkdir(parents=True)
    (folder / "digitStruct.mat").write_bytes(b"not hdf5")
    with pytest.raises(UserError, match="digitStruct"):
        load_split("multidigit-svhn", "test", tmp_path, download=False, params=PARAMS)
