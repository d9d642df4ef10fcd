"""The committed reference records as MLflow runs (one per record, in one experiment per reference
experiment), logged from the metrics files alone and idempotently, into a temporary SQLite store."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest

from pipeline.reference.plan import read_record, record_digest
from pipeline.tracking_reference import DIGEST_TAG, log_reference_records, reference_experiment

ROOT = Path(__file__).resolve().parents[2]
FILES = ["ce-s0.json", "ce-s1.json", "meta_iada-s0.json", "meta_iada-anti-s0.json"]


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline import tracking

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(tracking, "artifact_root", lambda: tmp_path / "mlartifacts")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")


def runs() -> dict[str, mlflow.entities.Run]:
    found = mlflow.search_runs(experiment_names=[reference_experiment("lt_ref")], output_format="list")
    return {r.info.run_name: r for r in found}


def test_each_record_is_a_run_with_its_params_metrics_and_digest_and_a_rerun_adds_none(store):
    records = [read_record(ROOT / "reference" / "metrics" / "lt_ref" / f) for f in FILES]
    assert log_reference_records("lt_ref", records) == (4, 0)
    logged = runs()
    assert set(logged) == {"ce-s0", "ce-s1", "meta_iada-s0", "meta_iada-anti-s0"}
    anti, record = logged["meta_iada-anti-s0"], records[3]
    assert {k: anti.data.params[k] for k in ("method", "label", "seed", "variant")} == {
        "method": "meta_iada", "label": "meta_iada-anti", "seed": "0", "variant": "anti"}
    assert anti.data.params["changed.methods.meta_iada.epsilon_sign"] == "anti"
    assert logged["ce-s1"].data.params["variant"] == "base"
    assert anti.data.tags[DIGEST_TAG] == record["digest"] and anti.data.tags["method"] == "meta_iada"
    assert anti.data.metrics["test/selected/acc"] == record["selected"]["test"]["acc"]
    assert anti.data.metrics["epsilon/last/mean"] == record["epsilon"]["mean"]
    history = mlflow.MlflowClient().get_metric_history(anti.info.run_id, "curves/val/acc")
    assert [(m.step, m.value) for m in history] == list(zip(record["curve"]["epoch"], record["curve"]["val_acc"]))

    assert log_reference_records("lt_ref", records) == (0, 0)  # idempotent
    assert len(mlflow.search_runs(experiment_names=[reference_experiment("lt_ref")], output_format="list")) == 4


def test_a_rerun_record_replaces_its_run_and_a_removed_record_loses_its_run(store):
    records = [read_record(ROOT / "reference" / "metrics" / "lt_ref" / f) for f in FILES]
    log_reference_records("lt_ref", records)
    old = runs()["ce-s0"].info.run_id
    rerun = {**records[0], "machine": {"cpu": "another"}}
    rerun["digest"] = record_digest(rerun)
    assert log_reference_records("lt_ref", [rerun, *records[1:3]]) == (1, 2)
    logged = runs()
    assert set(logged) == {"ce-s0", "ce-s1", "meta_iada-s0"}
    assert logged["ce-s0"].info.run_id != old and logged["ce-s0"].data.tags[DIGEST_TAG] == rerun["digest"]
