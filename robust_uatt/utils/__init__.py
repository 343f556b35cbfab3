"""Utilities: atomic file writes and the run lock, runtime/device set-up, user errors, shipped resources."""
