"""``tune_report``: a tuning budget's default-vs-tuned table, from its Optuna studies and the
committed reference metrics (no training), and its cost estimate from committed epoch timings.

    python -m pipeline.stages.tune_report --budget lt_ref_budget        # reports/tuning/lt_ref_budget.md
    python -m pipeline.stages.tune_report --budget lt_ref_budget --cost [--docs]

The page ends with the ``chosen:`` block to paste under ``tune.budgets.<budget>`` (each entry
becomes the reference variant ``<method>-tuned``) and the reference command that reruns them on
the reported seeds. ``--cost`` prints the CPU estimate; with ``--docs`` it rewrites its section
of docs/tuning.md.
"""

from __future__ import annotations

import argparse
import os

from pipeline.stages.common import main_guard
from pipeline.stages.tune import STORAGE_ENV


@main_guard
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget", required=True, help="a tune.budgets entry")
    p.add_argument("--cost", action="store_true", help="print the CPU cost estimate instead of the table")
    p.add_argument("--docs", action="store_true", help="with --cost: rewrite its section of docs/tuning.md")
    p.add_argument("--storage", help=f"the studies' storage URL (default: ${STORAGE_ENV}, else the budget's)")
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    args = p.parse_args(argv)
    if args.docs and not args.cost:
        p.error("--docs goes with --cost")

    from pipeline.layout import REPORTS_DIR, atomic_file
    from pipeline.params.budget import budget_study_names
    from pipeline.params.file import load_params
    from pipeline.tuning.cost import DOCS_PAGE, cost_markdown, with_cost_section

    params = load_params(args.params)
    budget_study_names(params, args.budget)  # an unknown budget: one line
    if args.cost:
        section = cost_markdown(params, args.budget)
        print(section)
        if args.docs:
            text = with_cost_section(DOCS_PAGE.read_text(), args.budget, section)
            with atomic_file(DOCS_PAGE) as tmp:
                tmp.write_text(text)
            print(f"wrote {DOCS_PAGE}")
        return

    from pipeline.tuning.budget_report import budget_report

    _, page = budget_report(params, args.budget, storage=args.storage or os.environ.get(STORAGE_ENV) or None)
    out = REPORTS_DIR / "tuning" / f"{args.budget}.md"
    with atomic_file(out) as tmp:
        tmp.write_text(page)
    print(page)
    print(f"wrote {out}")


if __name__ == "__main__":
    raise SystemExit(main())
