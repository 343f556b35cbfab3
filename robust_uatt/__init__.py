"""robust-uatt: adversarial-robustness benchmarking of the unified top-down and bottom-up attention model."""

__version__ = "0.1.0"
