"""Model definitions: one architecture per module."""
