"""``report`` stage: the markdown table comparing the methods of every experiment run.

    python -m pipeline.stages.report

Writes ``reports/comparison.md``, ``reports/summary.json`` and, per experiment, the figures that
compare its methods in ``reports/figures/`` (``dvc plots show``): the headline metric with the
spread over seeds, per-class accuracy against the class's training size, the validation curve of
every method on one chart, and the learned ε; and the data of the top-level plots of dvc.yaml
(``reports/curves/``, ``reports/per_class/``: a CSV per experiment, a column per method), in git,
so that ``dvc plots diff <rev>`` draws the methods of two revisions on one chart.
"""

from __future__ import annotations

import argparse

from pipeline.report.comparison import collect, markdown, summarise, write_comparison_figures, write_overlays
from pipeline.layout import METRICS_DIR, REPORTS_DIR, write_json
from pipeline.params.file import load_params
from pipeline.stages.common import main_guard


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
    write_comparison_figures(results, params.reference.subject, REPORTS_DIR / "figures")
    write_overlays(results, REPORTS_DIR)
    print(text)


if __name__ == "__main__":
    raise SystemExit(main())
