"""Glimpse sensor geometry, gradients and batching; glimpse networks' shapes; patch entropy."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F

from robust_uatt.models import glimpse as glimpse_module
from robust_uatt.models.bottom_up import patch_entropy
from robust_uatt.models.glimpse import GlimpseNetwork, GlimpseSensor


@pytest.fixture(autouse=True)
def _single_thread() -> Iterator[None]:
    """Tiny tensors gain nothing from 2 threads, and OpenMP barriers crawl when the shared cores are busy."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def aligned_location(row: torch.Tensor, col: torch.Tensor, g: int, h: int, w: int) -> torch.Tensor:
    """Centre (x, y) of the g x g patch whose top-left pixel is (row, col), per the documented convention."""
    return torch.stack([-1 + (2 * col + g) / w, -1 + (2 * row + g) / h], dim=1).float()


def test_scale0_equals_direct_crop_at_pixel_aligned_locations() -> None:
    torch.manual_seed(0)
    g, h, w = 4, 16, 20  # non-square on purpose: x scales by W, y by H
    x = torch.rand(3, 2, h, w)
    rows, cols = torch.tensor([0, 5, 12]), torch.tensor([16, 3, 7])
    patches = GlimpseSensor(g, scales=1)(x, aligned_location(rows, cols, g, h, w))
    assert patches.shape == (3, 1, 2, g, g)
    for b in range(3):
        crop = x[b, :, rows[b] : rows[b] + g, cols[b] : cols[b] + g]
        torch.testing.assert_close(patches[b, 0], crop, atol=1e-6, rtol=0)


def test_coarser_scales_are_area_averages_of_the_wider_window() -> None:
    torch.manual_seed(1)
    g, size = 4, 32
    x = torch.rand(2, 3, size, size)
    rows, cols = torch.tensor([12, 10]), torch.tensor([14, 8])  # the 4x window (16 px) stays inside the image
    patches = GlimpseSensor(g, scales=3, scale_factor=2.0)(x, aligned_location(rows, cols, g, size, size))
    for k, factor in enumerate((1, 2, 4)):
        for b in range(2):
            half = g * factor // 2
            r0, c0 = int(rows[b]) + g // 2 - half, int(cols[b]) + g // 2 - half
            window = x[b : b + 1, :, r0 : r0 + 2 * half, c0 : c0 + 2 * half]
            torch.testing.assert_close(patches[b : b + 1, k], F.avg_pool2d(window, factor), atol=1e-5, rtol=0)


def test_zero_outside_the_image() -> None:
    g = 4
    x = torch.rand(2, 1, 8, 8) + 0.1
    sensor = GlimpseSensor(g, scales=2)
    far = sensor(x, torch.full((2, 2), 3.0))
    assert torch.count_nonzero(far) == 0
    corner = sensor(x, torch.full((2, 2), -1.0))[:, 0]  # centred on the top-left corner: 3 quadrants outside
    assert torch.count_nonzero(corner[..., : g // 2, :]) == 0
    assert torch.count_nonzero(corner[..., :, : g // 2]) == 0
    torch.testing.assert_close(corner[..., g // 2 :, g // 2 :], x[:, :, : g // 2, : g // 2], atol=1e-6, rtol=0)


def test_gradients_reach_pixels_and_location() -> None:
    torch.manual_seed(2)
    x = torch.rand(2, 3, 16, 16, requires_grad=True)
    loc = (torch.rand(2, 2) * 1.2 - 0.6).requires_grad_(True)
    GlimpseSensor(4, scales=2).forward(x, loc).pow(2).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert loc.grad is not None and loc.grad.abs().sum() > 0 and torch.isfinite(loc.grad).all()


def test_all_scales_and_samples_come_from_one_grid_sample_call(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[int, ...]] = []
    original = F.grid_sample

    def counting(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        calls.append(tuple(args[0].shape))
        return original(*args, **kwargs)

    monkeypatch.setattr(glimpse_module.F, "grid_sample", counting)
    out = GlimpseSensor(4, scales=4, scale_factor=2.0)(torch.rand(5, 3, 32, 32), torch.zeros(5, 2))
    assert out.shape == (5, 4, 3, 4, 4)
    assert calls == [(5, 3, 32, 32)]


@pytest.mark.parametrize("kind", ["fc", "conv"])
def test_glimpse_network_shapes_and_gradients(kind: str) -> None:
    net = GlimpseNetwork(3, patch=6, scales=2, kind=kind, hidden=16, out_dim=24, conv_channels=(4, 4, 8))
    patches = torch.rand(5, 2, 3, 6, 6, requires_grad=True)
    out = net(patches, torch.rand(5, 2) * 2 - 1)
    assert out.shape == (5, 24)
    out.sum().backward()
    assert patches.grad is not None and patches.grad.abs().sum() > 0


def test_entropy_constant_patch_is_zero_bits_half_split_is_one_bit() -> None:
    flat = torch.stack([torch.zeros(3, 8, 8), torch.ones(3, 8, 8), torch.full((3, 8, 8), 0.3)])
    torch.testing.assert_close(patch_entropy(flat), torch.zeros(3))
    half = torch.zeros(2, 3, 8, 8)
    half[0, :, :, 4:] = 1.0  # left black, right white
    half[1, :, :4, :] = 1.0  # top white, bottom black
    torch.testing.assert_close(patch_entropy(half), torch.ones(2))
    quarter = torch.zeros(1, 1, 4, 4)
    quarter[..., :2, :2] = 1.0
    expected = -(0.25 * torch.log2(torch.tensor(0.25)) + 0.75 * torch.log2(torch.tensor(0.75)))
    torch.testing.assert_close(patch_entropy(quarter), expected.view(1))
