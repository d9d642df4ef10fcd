"""The reference sweep's results in MLflow (the reference side of :mod:`pipeline.tracking`): each
experiment's report as one run of its scenario's experiment, and each committed metrics record
(``reference/metrics/<experiment>/<label>-s<seed>.json``) as its own run of the experiment
``reference-<experiment>``, so that MLflow's compare view lines up methods, variants and seeds."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow
from mlflow.tracking import MlflowClient

from pipeline.tracking import run_tags, setup, start_run, store_errors, tracking_uri
from pipeline.tracking_names import evaluation_metrics, metric_name


def log_reference_report(name: str, summary: Mapping[str, Any], report_dir: Path) -> str:
    """The reference report of experiment ``name`` as one run ``<name>-reference-report`` of the
    scenario's MLflow experiment (reused when the report is rebuilt): each label's primary
    metric (validation-selected mean over seeds), the figures and the markdown page."""
    from pipeline.data.scenarios import SCENARIOS

    experiment = SCENARIOS[summary["scenario"]].mlflow_experiment
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


DIGEST_TAG = "reference.digest"  # the record's digest: what makes logging a record idempotent


def reference_experiment(name: str) -> str:
    """The MLflow experiment of reference experiment ``name``'s runs."""
    return f"reference-{name}"


def log_reference_records(name: str, records: list[Mapping[str, Any]]) -> tuple[int, int]:
    """Mirror the committed metrics ``records`` of reference experiment ``name`` (read and
    checked by :func:`pipeline.reference.plan.read_record`) in the MLflow experiment
    :func:`reference_experiment`: one finished run ``<label>-s<seed>`` per record, with params
    method, label, seed, variant and the keys the variant changes (``changed.<key>``), the
    record's single values and curves under the names of the training runs
    (:mod:`pipeline.tracking_names`), and tags method / label / seed and :data:`DIGEST_TAG`.
    A record whose digest already has a run is skipped; a run whose digest no longer matches a
    record (rerun, deleted) is deleted. Returns (runs added, runs deleted); needs no training."""
    from mlflow.entities import Param

    with store_errors():
        exp_id = setup(reference_experiment(name))
        client = MlflowClient(tracking_uri())
        have = {r.data.tags.get(DIGEST_TAG): r.info.run_id for r in client.search_runs([exp_id], max_results=50000)}
        wanted = {r["digest"]: r for r in records}
        stale = [run_id for digest, run_id in have.items() if digest not in wanted]
        for run_id in stale:
            client.delete_run(run_id)
        new = [r for digest, r in wanted.items() if digest not in have]
        for r in new:
            label, seed = r["label"], int(r["seed"])
            variant = label.removeprefix(r["method"]).lstrip("-") or "base"
            tags = run_tags({"stage": "reference", "experiment": name, "method": r["method"], "label": label,
                             "seed": str(seed), "training_run_id": str(r.get("run_id")), DIGEST_TAG: r["digest"]})
            run_id = client.create_run(exp_id, run_name=f"{label}-s{seed}", tags=tags).info.run_id
            params = {"method": r["method"], "label": label, "seed": seed, "variant": variant,
                      "protocol": r.get("protocol"), "scenario": r.get("scenario"),
                      **{f"changed.{k}": v for k, v in (r.get("changed") or {}).items()}}
            client.log_batch(run_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()])
            metrics = record_metrics(r)
            for i in range(0, len(metrics), 1000):  # MLflow's limit per batch
                client.log_batch(run_id, metrics=metrics[i:i + 1000])
            client.set_terminated(run_id)
        if new or stale:
            print(f"MLflow experiment {reference_experiment(name)}: {len(new)} record run(s) added, "
                  f"{len(stale)} outdated deleted", file=sys.stderr)
        return len(new), len(stale)


def record_metrics(record: Mapping[str, Any]) -> list[Any]:
    """A reference record's single values (step 0) and its curves (step = epoch)."""
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = [Metric(k, v, now, 0) for k, v in evaluation_metrics(record).items()]
    curve = record.get("curve", {})
    for key, values in curve.items():
        if key != "epoch":
            metrics += [Metric(metric_name(key), float(v), now, int(epoch))
                        for epoch, v in zip(curve["epoch"], values) if v is not None]
    return metrics
