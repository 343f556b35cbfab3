"""Training: the loop, checkpoints (bit-identical resume), model cards."""
