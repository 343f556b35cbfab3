"""Evaluation: the attack harness (cascade, worst case, resumable state), sanity checks, suites, curves."""
