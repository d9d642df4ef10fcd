"""Data sets of the four biased-learning scenarios: sources, builders, the prepared format."""
