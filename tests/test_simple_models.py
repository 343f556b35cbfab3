"""Plain baselines: output shapes for MNIST and cluttered MNIST, input gradients, normalization, signatures."""

from __future__ import annotations

import inspect

import pytest
import torch
from torch import nn

from robust_uatt.models.simple import build_cnn, build_mlp
from robust_uatt.models.vgg import Normalize


@pytest.mark.parametrize("size,conv_layers", [(28, 2), (100, 5), (32, 3)])
def test_cnn_shapes_and_input_gradient(size: int, conv_layers: int) -> None:
    torch.manual_seed(0)
    model = build_cnn(num_classes=10, in_channels=1, image_size=size, conv_layers=conv_layers, channels=8)
    assert sum(isinstance(m, nn.Conv2d) for m in model.modules()) == conv_layers
    x = torch.rand(3, 1, size, size, requires_grad=True)
    out = model(x)
    assert out.shape == (3, 10)
    out.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.parametrize("size", [28, 100])
def test_mlp_shapes_and_input_gradient(size: int) -> None:
    torch.manual_seed(0)
    model = build_mlp(num_classes=10, in_channels=1, image_size=size)
    assert [m.out_features for m in model.modules() if isinstance(m, nn.Linear)] == [256, 256, 10]
    x = torch.rand(4, 1, size, size, requires_grad=True)
    out = model(x)
    assert out.shape == (4, 10)
    out[:, 3].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_normalization_inside_the_model() -> None:
    torch.manual_seed(0)
    plain = build_cnn(num_classes=10, in_channels=3, image_size=32)
    normed = build_cnn(num_classes=10, in_channels=3, image_size=32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    assert isinstance(normed[0], Normalize) and not isinstance(plain[0], Normalize)
    with torch.no_grad():
        for dst, src in zip(normed.parameters(), plain.parameters(), strict=True):
            dst.copy_(src)
    x = torch.rand(2, 3, 32, 32)
    assert torch.allclose(normed(x), plain((x - 0.5) / 0.25), atol=1e-5)
    mlp = build_mlp(num_classes=10, in_channels=1, image_size=28, mean=(0.1307,), std=(0.3081,))
    assert isinstance(mlp[0], Normalize) and mlp(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    with pytest.raises(ValueError):
        build_mlp(num_classes=10, in_channels=3, image_size=28, mean=(0.1,), std=(0.3,))


def test_builders_are_keyword_only_with_typed_defaults() -> None:
    for builder in (build_mlp, build_cnn):
        params = inspect.signature(builder).parameters.values()
        assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params)
        assert all(p.annotation is not inspect.Parameter.empty for p in params)
        assert not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
