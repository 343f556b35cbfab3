"""Datasets as in-memory uint8 tensors, data-directory resolution, generated datasets (cluttered MNIST)."""
