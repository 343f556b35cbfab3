"""Benchmarking against RobustBench: leaderboard reading, comparison, RobustBench model loading."""
