"""Model definitions (one architecture per module, each registered by ``@register_model``) and the zoo (recipes,
building, loading trained runs)."""

from robust_uatt.models import sequence, simple, uatt, vgg  # noqa: F401  (importing registers each architecture)
from robust_uatt.models.registry import MODELS, register_model

__all__ = ["MODELS", "register_model"]
