"""``python -m pipeline.bench [--json]``: see :mod:`pipeline.bench.run`."""

from pipeline.bench.run import main

if __name__ == "__main__":
    raise SystemExit(main())
