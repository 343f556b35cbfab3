"""Adapters that run third-party attack implementations (torchattacks, reference AutoAttack) in the harness."""
