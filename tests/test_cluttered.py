"""Cluttered translated MNIST generator: shapes, determinism, the digit survives clutter, clutter count matters."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from robust_uatt.data.cluttered import make_cluttered


def fake_digits(num: int = 50, seed: int = 123) -> tuple[torch.Tensor, torch.Tensor]:
    """Random strokes in the central 20x20 of a 28x28 frame (like MNIST: blank borders)."""
    gen = torch.Generator().manual_seed(seed)
    d = torch.zeros(num, 28, 28, dtype=torch.uint8)
    d[:, 4:24, 4:24] = (torch.rand(num, 20, 20, generator=gen) > 0.6).to(torch.uint8) * torch.randint(
        1, 256, (num, 20, 20), generator=gen, dtype=torch.uint8
    )
    return d, torch.arange(num) % 10


def window_match(image: torch.Tensor, digit: torch.Tensor, exact: bool) -> bool:
    """Is there a placement where the canvas equals (exact) or dominates (max-blended clutter) the digit?

    Random-stroke fake digits make an accidental ">=" match at a wrong placement practically impossible.
    """
    win = F.unfold(image[None, None].float(), kernel_size=digit.shape).squeeze(0)  # (784, L)
    d = digit.reshape(-1, 1).float()
    ok = (win == d).all(0) if exact else (win >= d).all(0)
    return bool(ok.any())


def test_shapes_dtypes_and_labels() -> None:
    digits, labels = fake_digits()
    images, out_labels = make_cluttered(digits, labels, canvas=60, pieces=4, seed=1)
    assert images.shape == (50, 60, 60) and images.dtype == torch.uint8
    assert out_labels.dtype == torch.int64 and torch.equal(out_labels, labels.long())
    images, out_labels = make_cluttered(digits, labels, canvas=60, pieces=4, seed=1, n=80)
    assert images.shape == (80, 60, 60) and out_labels.shape == (80,)
    images, out_labels = make_cluttered(digits, labels, canvas=60, seed=1, n=20)
    assert len(set(out_labels.tolist())) > 1


def test_determinism_per_seed() -> None:
    digits, labels = fake_digits()
    a = make_cluttered(digits, labels, seed=7, n=30)
    b = make_cluttered(digits, labels, seed=7, n=30)
    c = make_cluttered(digits, labels, seed=8, n=30)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_chunking_does_not_change_output(monkeypatch: pytest.MonkeyPatch) -> None:
    import robust_uatt.data.cluttered as mod

    digits, labels = fake_digits()
    a = make_cluttered(digits, labels, canvas=40, seed=3, n=37)
    monkeypatch.setattr(mod, "_CHUNK", 5)
    b = make_cluttered(digits, labels, canvas=40, seed=3, n=37)
    assert torch.equal(a[0], b[0])


@pytest.mark.parametrize("pieces", [0, 10])
def test_digit_is_present(pieces: int) -> None:
    digits, labels = fake_digits()
    images, _ = make_cluttered(digits, labels, canvas=100, pieces=pieces, seed=0)
    for i in range(6):
        assert window_match(images[i], digits[i], exact=pieces == 0), i
        assert not window_match(images[i], digits[i + 1], exact=pieces == 0), i  # the check can fail
    if pieces == 0:
        assert torch.equal(images.flatten(1).sum(1, dtype=torch.int64), digits.flatten(1).sum(1, dtype=torch.int64))


def test_clutter_count_affects_image() -> None:
    digits, labels = fake_digits()
    ink = []
    for pieces in (0, 4, 16):
        images, _ = make_cluttered(digits, labels, pieces=pieces, seed=0)
        ink.append((images > 0).sum().item())
    assert ink[0] < ink[1] < ink[2]


def test_clutter_comes_from_other_digits() -> None:
    """With two digits, every piece is cut from the other one: a blank partner leaves only the digit."""
    digits = torch.zeros(2, 28, 28, dtype=torch.uint8)
    digits[0, 4:24, 4:24] = 200
    images, _ = make_cluttered(digits, torch.tensor([3, 5]), canvas=50, pieces=20, seed=0)
    assert (images[0] > 0).sum() == 400  # digit 0 alone; clutter was cut from the blank digit 1
    assert (images[1] > 0).sum() > 0  # digit 1's canvas has pieces of digit 0


def test_rejects_bad_arguments() -> None:
    digits, labels = fake_digits()
    with pytest.raises(ValueError):
        make_cluttered(digits, labels, canvas=20)
    with pytest.raises(ValueError):
        make_cluttered(digits.float(), labels)
    with pytest.raises(ValueError):
        make_cluttered(digits, labels, piece_size=40)


def test_pieces_zero_gives_the_clean_version_of_the_same_images() -> None:
    digits, labels = fake_digits()
    clean, la = make_cluttered(digits, labels, pieces=0, seed=5, n=20)
    busy, lb = make_cluttered(digits, labels, pieces=10, seed=5, n=20)
    assert torch.equal(la, lb) and bool((busy >= clean).all()) and bool((busy > clean).any())
