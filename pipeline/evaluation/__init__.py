"""Evaluation of trained runs: test metrics under both selection rules, epsilon analyses, a run's
plot data (the reports built from the metrics are in :mod:`pipeline.report`)."""
