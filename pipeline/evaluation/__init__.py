"""Evaluation of trained runs (test metrics under both selection rules, epsilon analyses, plot
data) and the comparison report."""
