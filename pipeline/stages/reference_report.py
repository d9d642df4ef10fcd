"""``reference_report`` stage: the reference sweep's tables and figures, from the committed
metrics files alone (no training).

    python -m pipeline.stages.reference_report            # reports/reference/ and the README's results
    python -m pipeline.stages.reference_report --check    # exit 1 if either is out of date

Writes ``reports/reference/<experiment>.md``, its figures and ``summary.json``, and rewrites the
README's results section between its ``reference results`` markers (``--no-readme``: not the
README, as the DVC stage runs it); logs each experiment's report to MLflow.
"""

from __future__ import annotations

import argparse
import sys

from pipeline.stages.common import main_guard


@main_guard
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="exit 1 if a report file or the README is out of date")
    p.add_argument("--no-readme", action="store_true", help="leave README.md alone (the DVC stage's way)")
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    p.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    args = p.parse_args(argv)

    from pipeline.params.file import load_params
    from pipeline.report.reference import build_reports

    params = load_params(args.params)
    stale = build_reports(params, check=args.check, track=not (args.no_mlflow or args.check),
                          readme=not args.no_readme)
    if args.check and stale:
        print("out of date: " + ", ".join(map(str, stale)) + "; run python -m pipeline.stages.reference_report",
              file=sys.stderr)
        raise SystemExit(1)
    for path in stale:
        print(f"wrote {path}")


if __name__ == "__main__":
    raise SystemExit(main())
