"""Benchmarks of the training steps and the input pipeline: ``python -m pipeline.bench [--json]``."""
