"""Multi-digit MNIST generator (Table 3): determinism, labels that match the digits placed, geometry, the dataset."""

from __future__ import annotations

import pytest
import torch

from robust_uatt.data.datasets import load_split, sequence_length
from robust_uatt.data.multidigit import IGNORE, TERMINAL, make_multidigit, sequence_labels
from robust_uatt.models.outputs import correct, decide, hits
from robust_uatt.utils.errors import UserError

LEVELS = torch.arange(10) * 20 + 40  # class k is drawn at intensity 40 + 20 k: readable back from the pixels


def coded_digits(per_class: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """28x28 frames whose central 14x14 block is flat at the class's intensity (MNIST-like blank borders)."""
    labels = torch.arange(10).repeat(per_class)
    d = torch.zeros(len(labels), 28, 28, dtype=torch.uint8)
    d[:, 7:21, 7:21] = LEVELS[labels].to(torch.uint8)[:, None, None]
    return d, labels


def test_deterministic_per_seed_and_chunk_size(monkeypatch: pytest.MonkeyPatch) -> None:
    import robust_uatt.data.multidigit as mod

    digits, labels = coded_digits()
    a = make_multidigit(digits, labels, n=40, seed=5)
    b = make_multidigit(digits, labels, n=40, seed=5)
    c = make_multidigit(digits, labels, n=40, seed=6)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    monkeypatch.setattr(mod, "_CHUNK", 7)
    d = make_multidigit(digits, labels, n=40, seed=5)
    assert torch.equal(a[0], d[0]) and torch.equal(a[1], d[1])


def test_labels_match_the_digits_placed_left_to_right() -> None:
    digits, labels = coded_digits()
    images, seq, lay = make_multidigit(digits, labels, n=200, seed=3, return_layout=True)
    assert images.shape == (200, 54, 54) and images.dtype == torch.uint8 and seq.shape == (200, 6)
    assert set(lay.count.tolist()) == {1, 2, 3, 4, 5}
    covered = torch.zeros_like(images, dtype=torch.bool)
    for i in range(200):
        n, s = int(lay.count[i]), int(lay.size[i])
        assert seq[i, n] == TERMINAL and (seq[i, n + 1:] == IGNORE).all()
        for k in range(n):
            x, y = int(lay.x[i, k]), int(lay.y[i, k])
            assert 0 <= x and x + s <= 54 and 0 <= y and y + s <= 54  # the crop never cuts a digit
            if k:
                assert x > int(lay.x[i, k - 1])  # left to right
            centre = images[i, y + s // 2, x + s // 2].item()  # only this digit's block reaches its frame centre
            read = int(torch.argmin((LEVELS - centre).abs()))
            assert abs(centre - LEVELS[read].item()) <= 2, (i, k, centre)
            assert read == seq[i, k] == labels[lay.source[i, k]]
            covered[i, y:y + s, x:x + s] = True
    assert not images[~covered].any()  # nothing drawn outside the digits' frames


def test_test_split_crops_are_central_and_train_crops_move() -> None:
    digits, labels = coded_digits()
    _, _, train = make_multidigit(digits, labels, n=300, seed=1, train=True, return_layout=True)
    _, _, test = make_multidigit(digits, labels, n=300, seed=1, train=False, return_layout=True)
    # the same layout stream, cropped at (5, 5) in test and anywhere in 0..10 in train
    shift = test.x[:, 0] - train.x[:, 0]
    assert shift.min() >= -5 and shift.max() <= 5 and len(set(shift.tolist())) > 5


def test_sequence_labels_and_decoding() -> None:
    y = sequence_labels(torch.tensor([[3, 1, 4], [1, 5, 9]]), torch.tensor([1, 3]), 3)
    assert y.tolist() == [[3, 10, IGNORE, IGNORE], [1, 5, 9, 10]]
    logits = torch.full((3, 11, 4), -5.0)
    for b, seq in enumerate(([3, 10, 7, 2], [1, 5, 9, 10], [1, 5, 10, 10])):
        for s, c in enumerate(seq):
            logits[b, c, s] = 5.0
    assert decide(logits).tolist() == [[3, 10, IGNORE, IGNORE], [1, 5, 9, 10], [1, 5, 10, IGNORE]]
    target = torch.stack([y[0], y[1], y[1]])
    assert correct(logits, target).tolist() == [True, True, False]  # the third misses a digit: wrong length
    assert hits(torch.tensor([1, 2]), torch.tensor([1, 3])).tolist() == [True, False]
    with pytest.raises(ValueError, match="differ in shape"):
        hits(torch.zeros(2, 4, dtype=torch.long), torch.zeros(2, dtype=torch.long))


def test_bad_geometry_is_a_value_error() -> None:
    digits, labels = coded_digits()
    with pytest.raises(ValueError, match="box"):
        make_multidigit(digits, labels, n=4, canvas=100, crop=54)
    with pytest.raises(ValueError, match="min_digits"):
        make_multidigit(digits, labels, n=4, min_digits=3, max_digits=2)


def test_dataset_from_the_data_directory(data_dir) -> None:
    params = {"canvas": 0, "crop": 54, "min_digits": 1, "max_digits": 3, "digits_seed": 0}
    train = load_split("multidigit-mnist", "train", data_dir, download=False, params=params)
    test = load_split("multidigit-mnist", "test", data_dir, download=False, params=params)
    assert train.x.shape[1:] == (1, 54, 54) and train.y.shape == (len(train), 4) == (len(train.x), 4)
    assert test.y.shape[1] == sequence_length("multidigit-mnist", params) == 4
    assert "multidigit" in train.source and "central" in test.source
    again = load_split("multidigit-mnist", "test", data_dir, download=False, params=params)
    assert torch.equal(test.x, again.x)
    with pytest.raises(UserError, match="multidigit-mnist"):
        load_split("multidigit-mnist", "test", data_dir, download=False, params={**params, "canvas": 120})
