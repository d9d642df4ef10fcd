"""``report`` stage: the markdown table comparing the methods of every experiment run.

    python -m pipeline.stages.report

Writes ``reports/comparison.md`` and ``reports/summary.json`` (a DVC metrics file).
"""

from __future__ import annotations

import argparse

from pipeline.params.experiment import load_params
from pipeline.evaluation.report import collect, markdown, summarise
from pipeline.stages.common import METRICS_DIR, REPORTS_DIR, main_guard, write_json


@main_guard
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--params", default="params.yaml")
    args = p.parse_args(argv)
    params = load_params(args.params)
    results = collect(METRICS_DIR, params.run.experiments, params.run.methods, params.run.seeds)
    REPORTS_DIR.mkdir(parents=True, exist_ok=True)
    text = markdown(results)
    (REPORTS_DIR / "comparison.md").write_text(text)
    write_json(summarise(results), REPORTS_DIR / "summary.json")
    print(text)


if __name__ == "__main__":
    raise SystemExit(main())
