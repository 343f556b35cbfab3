"""Model recipes (zoo/*.toml), shipped as package data."""
