"""Model definitions (one architecture per module) and the zoo (recipes, registry, loading trained runs)."""
