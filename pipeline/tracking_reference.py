"""The reference sweep's results in MLflow (the reference side of :mod:`pipeline.tracking`)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow
from mlflow.tracking import MlflowClient

from pipeline.tracking import setup, start_run, store_errors, tracking_uri


def log_reference_report(name: str, summary: Mapping[str, Any], report_dir: Path) -> str:
    """The reference report of experiment ``name`` as one run ``<name>-reference-report`` of the
    scenario's MLflow experiment (reused when the report is rebuilt): each label's primary
    metric (validation-selected mean over seeds), the figures and the markdown page."""
    from pipeline.params.experiment import MLFLOW_EXPERIMENT

    experiment = MLFLOW_EXPERIMENT[summary["scenario"]]
    with store_errors():
        exp_id = setup(experiment)
        found = MlflowClient(tracking_uri()).search_runs(
            [exp_id], filter_string=f"tags.reference_report = '{name}'", max_results=1)
        run_id = found[0].info.run_id if found else None
        with start_run(experiment, f"{name}-reference-report", run_id=run_id,
                       tags={"stage": "reference_report", "reference_report": name}) as run:
            primary = summary["primary"]
            mlflow.log_metrics({f"{label}.{primary}": e["selected"][primary]["mean"]
                                for label, e in summary["labels"].items()
                                if e["selected"][primary]["mean"] is not None})
            for path in sorted(report_dir.glob(f"{name}-*.png")) + [report_dir / f"{name}.md"]:
                if path.is_file():
                    mlflow.log_artifact(str(path), artifact_path="reference")
        return run.info.run_id
