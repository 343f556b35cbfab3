"""Attack suites (attacks/*.toml), shipped as package data."""
