"""The paper's plain baselines (Tables 1-2): a fully connected net and a small conv net.

Both take [0, 1] pixels and normalize inside the model (optional ``mean``/``std``) so attacks and the attention
models share one input space. Every option is a typed keyword with a default because the zoo registry validates
recipe keys against these signatures.

- ``build_mlp``: "FC, 2 layers (256 hiddens each)": ``layers`` hidden Linear+ReLU layers of ``hidden`` units.
- ``build_cnn``: "Convolutional networks, 2 layers" (MNIST) / "Convolutional, 5 layers" (cluttered 100x100):
  ``conv_layers`` blocks of 3x3 conv + ReLU, each followed by 2x2 max-pooling while the map is at least 4 px wide
  (100 -> 50 -> 25 -> 12 -> 6 -> 3 for five layers; 28 -> 14 -> 7 for two), then a ``hidden``-unit FC layer and the
  linear classifier (``hidden=0`` drops the FC layer). The paper gives no widths; ``channels`` is constant.
"""

from __future__ import annotations

from torch import nn

from robust_uatt.models.registry import register_model
from robust_uatt.models.vgg import Normalize


def _normalize(mean: tuple[float, ...] | None, std: tuple[float, ...] | None, in_channels: int) -> list[nn.Module]:
    if mean is None and std is None:
        return []
    mean = tuple(mean) if mean is not None else (0.0,) * in_channels
    std = tuple(std) if std is not None else (1.0,) * in_channels
    if len(mean) != in_channels or len(std) != in_channels:
        raise ValueError(f"mean/std need {in_channels} entries, got {len(mean)} and {len(std)}")
    return [Normalize(mean, std)]


@register_model("mlp")
def build_mlp(
    *,
    num_classes: int,
    in_channels: int,
    image_size: int,
    hidden: int = 256,
    layers: int = 2,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
) -> nn.Module:
    """Flatten -> ``layers`` x (Linear(hidden) + ReLU) -> Linear(num_classes)."""
    if layers < 0 or hidden < 1:
        raise ValueError("layers must be >= 0 and hidden >= 1")
    mods: list[nn.Module] = [*_normalize(mean, std, in_channels), nn.Flatten()]
    width = in_channels * image_size * image_size
    for _ in range(layers):
        mods += [nn.Linear(width, hidden), nn.ReLU(inplace=True)]
        width = hidden
    mods.append(nn.Linear(width, num_classes))
    return nn.Sequential(*mods)


@register_model("cnn")
def build_cnn(
    *,
    num_classes: int,
    in_channels: int,
    image_size: int,
    conv_layers: int = 2,
    channels: int = 32,
    hidden: int = 256,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
) -> nn.Module:
    """``conv_layers`` x (Conv3x3 + ReLU [+ MaxPool2]) -> Flatten -> [Linear(hidden) + ReLU] -> Linear(num_classes)."""
    if conv_layers < 1 or channels < 1 or hidden < 0:
        raise ValueError("conv_layers and channels must be >= 1, hidden >= 0")
    mods: list[nn.Module] = list(_normalize(mean, std, in_channels))
    size, width = image_size, in_channels
    for _ in range(conv_layers):
        mods += [nn.Conv2d(width, channels, 3, padding=1), nn.ReLU(inplace=True)]
        width = channels
        if size >= 4:
            mods.append(nn.MaxPool2d(2))
            size //= 2
    mods.append(nn.Flatten())
    features = width * size * size
    if hidden:
        mods += [nn.Linear(features, hidden), nn.ReLU(inplace=True)]
        features = hidden
    mods.append(nn.Linear(features, num_classes))
    return nn.Sequential(*mods)
