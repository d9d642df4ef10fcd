"""A broken or reset MLflow store: one line before any work, or a new run for evaluation."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_a_garbage_store_stops_the_stage_in_one_line_before_any_work(tmp_path):
    store = tmp_path / "mlflow.db"
    store.write_bytes(b"this is not an sqlite database" * 100)
    env = {"PYTHONPATH": str(ROOT), "PATH": os.environ["PATH"], "MLFLOW_TRACKING_URI": f"sqlite:///{store}",
           "HOME": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-m", "pipeline.stages.prepare", "--experiment", "lt",
                           "--params", str(ROOT / "params.yaml")], cwd=tmp_path, capture_output=True, text=True,
                          env=env, timeout=300)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith(f"error: MLflow store sqlite:///{store} is not usable"), lines
    assert "--no-mlflow" in lines[0]
    assert not (tmp_path / "data").exists()  # stopped before building the data set


def test_evaluation_of_a_run_missing_from_the_store_logs_to_a_new_run(tmp_path, monkeypatch, capsys):
    """A reset store or checkpoints from another machine: the training run id is unknown."""
    import mlflow

    from pipeline import tracking
    log_to_run = tracking.log_evaluation

    monkeypatch.setattr(tracking, "artifact_root", lambda: tmp_path / "mlartifacts")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    (tmp_path / "plots").mkdir()
    (tmp_path / "plots" / "per_class.csv").write_text("class,accuracy\nc0,0.5\n")
    missing = "0123456789abcdef0123456789abcdef"
    result = {"run_id": missing, "final": {"test": {"acc": 0.5, "few_acc": float("nan")}},
              "selected": {"test": {"acc": 0.25}}}
    log_to_run(result, tmp_path / "plots", "long-tail", "lt-ce-s0")
    assert f"MLflow run {missing} of these weights is not in" in capsys.readouterr().err
    runs = mlflow.search_runs(experiment_names=["long-tail"], output_format="list")
    assert len(runs) == 1 and runs[0].info.run_name == "lt-ce-s0-evaluation"
    assert runs[0].data.tags["training_run_id"] == missing
    assert runs[0].data.metrics == {"test/final/acc": 0.5, "test/selected/acc": 0.25}  # NaN is not logged


def test_evaluation_does_not_reopen_the_training_run(tmp_path, monkeypatch):
    """The training run's status and end time stay the training's (ce showed 6.6 min for 1.3 min
    of training when evaluation reopened it); the test metrics land in it."""
    import mlflow

    from pipeline import tracking
    log_to_run = tracking.log_evaluation

    monkeypatch.setattr(tracking, "artifact_root", lambda: tmp_path / "mlartifacts")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    tracking.setup("long-tail")
    with mlflow.start_run(run_name="lt-ce-s0") as run:
        pass
    before = mlflow.get_run(run.info.run_id).info
    (tmp_path / "plots").mkdir()
    (tmp_path / "plots" / "per_class.csv").write_text("class,accuracy\nc0,0.5\n")
    time.sleep(0.05)
    log_to_run({"run_id": run.info.run_id, "final": {"test": {"acc": 0.5}}}, tmp_path / "plots", "long-tail",
               "lt-ce-s0")
    after = mlflow.get_run(run.info.run_id)
    assert after.info.status == "FINISHED" and after.info.end_time == before.end_time
    assert after.data.metrics == {"test/final/acc": 0.5}
    assert {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)} == {"plots", "metrics.json"}


def test_a_read_only_store_is_one_tracking_error(tmp_path, monkeypatch):
    """A store that refuses writes (here opened read-only through SQLite's URI mode; as root a
    chmod would not stop the writes) gives a TrackingError, not an AttributeError traceback."""
    import pytest

    from pipeline import tracking

    monkeypatch.setattr(tracking, "artifact_root", lambda: tmp_path / "mlartifacts")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    tracking.setup("long-tail")  # a real, migrated store
    # SQLite's URI form with the driver named: MLflow creates the parent folder of a `sqlite:///` path
    # and would take "file:" for a relative folder in the working directory (the work tree).
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite+pysqlite:///file:{tmp_path / 'mlflow.db'}?mode=ro&uri=true")
    with pytest.raises(tracking.TrackingError, match=r"is not usable \(MlflowException: .*readonly database"):
        with tracking.store_errors():
            tracking.setup("noisy-labels")  # creating an experiment needs a write


def test_a_tracking_server_that_does_not_answer_stops_the_stage_in_one_line_at_once(tmp_path):
    """MLflow's client retries a dead server for minutes; the stage says so in one line at once."""
    from tests.test_serve import free_port

    url = f"http://127.0.0.1:{free_port()}"
    env = {"PYTHONPATH": str(ROOT), "PATH": os.environ["PATH"], "MLFLOW_TRACKING_URI": url, "HOME": str(tmp_path),
           "DVC_ROOT": str(tmp_path)}
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "pipeline.stages.prepare", "--experiment", "lt",
                           "--params", str(ROOT / "params.yaml")], cwd=tmp_path, capture_output=True, text=True,
                          env=env, timeout=300)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith(f"error: MLflow tracking server {url} (MLFLOW_TRACKING_URI) "
                                                   "does not answer"), lines
    assert "make server" in lines[0] and time.monotonic() - start < 60
    assert list(tmp_path.iterdir()) == []  # no data built, no local store


def test_a_run_of_a_dvc_experiment_is_named_after_it(tmp_path, monkeypatch):
    """`dvc exp run` exports DVC_EXP_NAME: the variant's run of lt-meta_iada-s0 is listed under
    another name than the workspace's, and tagged with the experiment."""
    import mlflow

    from pipeline import tracking

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(tracking, "artifact_root", lambda: tmp_path / "mlartifacts")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    with tracking.start_run("long-tail", "lt-meta_iada-s0"):
        pass
    monkeypatch.setenv("DVC_EXP_NAME", "gaunt-sofa")
    with tracking.start_run("long-tail", "lt-meta_iada-s0"):
        pass
    tracker = tracking.RunTracker("long-tail", "lt-meta_iada-s0")  # the training runs' way in
    tracker.start(None, fingerprint="f", params={})
    tracker.close("FINISHED")
    runs = mlflow.search_runs(experiment_names=["long-tail"], output_format="list")
    assert sorted((r.info.run_name, r.data.tags["dvc_exp_name"]) for r in runs) == [
        ("lt-meta_iada-s0", "workspace"), ("lt-meta_iada-s0 (gaunt-sofa)", "gaunt-sofa"),
        ("lt-meta_iada-s0 (gaunt-sofa)", "gaunt-sofa")]
