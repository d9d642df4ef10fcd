"""The reference sweeps (converged CPU runs of every method, several seeds and splits): their runs,
hashes and DVC stages (the tables and figures built from their committed metrics are in
:mod:`pipeline.report`)."""
