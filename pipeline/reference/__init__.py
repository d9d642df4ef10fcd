"""The reference sweep (converged CPU runs of every method, several seeds and splits) and the
tables and figures built from its committed metrics."""
