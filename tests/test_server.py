"""`make server` (pipeline.serve server): a real MLflow tracking server on a free 127.0.0.1 port
with a SQLite or a PostgreSQL backend (a throw-away server, tests/postgres.py) and proxied artifacts. The pretrain, train and evaluate stages and a study
log through it (``MLFLOW_TRACKING_URI=http://...``) with the runs, params, metrics, artifacts and
the registered perturbation network of the local store; the network loads back through the
server by alias; nothing lands in the checkout (no ``mlflow.db``, no ``mlartifacts``)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
import yaml

from pipeline.data.prepared import save_prepared
from pipeline.layout import data_dir
from pipeline.params.schema import to_dict
from pipeline.stages import evaluate as evaluate_stage
from pipeline.stages import pretrain as pretrain_stage
from pipeline.stages import train as train_stage
from pipeline import tracking
from pipeline.tracking import CHAMPION, registered_model_name
from tests.postgres import postgres_server
from tests.test_serve import free_port
from tests.tiny import tiny_data, tiny_experiment
from tests.tuning.test_study import EXPERIMENT, LR_WD_SPACE, children, load, run, write_params

ROOT = Path(__file__).resolve().parents[1]
LOCAL_STORE = ("mlflow.db", "mlartifacts", "mlruns", "mlflow-server")


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """``python -m pipeline.serve server`` in its own project root, its backend the default SQLite
    store there or a PostgreSQL database (``make server BACKEND=postgresql://...``); yields its
    URL and its store folder (artifacts, and the SQLite file)."""
    with contextlib.ExitStack() as stack:
        url = None if request.param == "sqlite" else stack.enter_context(postgres_server())
        yield from _server(tmp_path_factory, [] if url is None else ["--backend", url])
        if url is not None:  # the runs went to PostgreSQL (not to a SQLite file beside the server)
            import sqlalchemy

            engine = sqlalchemy.create_engine(url)
            with engine.connect() as conn:
                assert conn.execute(sqlalchemy.text("SELECT count(*) FROM runs")).scalar() > 0
            engine.dispose()


def _server(tmp_path_factory: pytest.TempPathFactory, backend: list[str]) -> Iterator[tuple[str, Path]]:
    home = tmp_path_factory.mktemp("server-home")
    port = free_port()
    env = {**os.environ, "DVC_ROOT": str(home), "PYTHONPATH": str(ROOT)}
    env.pop("MLFLOW_TRACKING_URI", None)
    log = open(home / "server.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.serve", "server", "--port", str(port), *backend],
                            cwd=home, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if urllib.request.urlopen(f"{url}/health", timeout=2).status == 200:
                    break
            except OSError:
                assert proc.poll() is None, (home / "server.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "the tracking server did not start in 120 s"
                time.sleep(0.3)
        yield url, home / "mlflow-server"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 15)
            proc.wait(timeout=30)
        log.close()


@pytest.fixture
def checkout(server: tuple[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project root in tmp with tiny prepared data, logging to the server."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server[0])
    save_prepared(tiny_data(per_class=(24, 16, 12)), data_dir(EXPERIMENT))
    return tmp_path


def test_the_stages_log_through_the_server_and_the_network_loads_back_by_alias(server, checkout):
    url, store = server
    exp = {**to_dict(tiny_experiment()), "methods": {"ce": {}, "meta_iada": {}}}
    params = {"run": {"experiments": [EXPERIMENT], "methods": ["meta_iada"], "seeds": [0], "device": "cpu"},
              "experiments": {EXPERIMENT: exp}, "tune": {"studies": {}}}
    (checkout / "params.yaml").write_text(yaml.safe_dump(params))
    tracking.log_prepared("long-tail", EXPERIMENT, data_params=exp["data"], counts={"train": 52}, seconds=0.5,
                          card={"num_classes": 3})  # the prepare stage's run (the stage itself needs real data)
    args = ["--experiment", EXPERIMENT, "--seed", "0"]
    assert pretrain_stage.main(args) == 0
    assert train_stage.main([*args, "--method", "meta_iada"]) == 0
    assert evaluate_stage.main([*args, "--method", "meta_iada"]) == 0

    client = mlflow.MlflowClient(url)
    experiment = client.get_experiment_by_name("long-tail")
    assert experiment.artifact_location.startswith("mlflow-artifacts:")  # proxied by the server
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert set(runs) == {"tiny-prepare", "tiny-pretrain-s0", "tiny-meta_iada-s0"}
    assert runs["tiny-prepare"].data.metrics["n_train"] == 52
    assert [a.path for a in client.list_artifacts(runs["tiny-prepare"].info.run_id)] == ["data_card.json"]
    meta = runs["tiny-meta_iada-s0"]
    assert meta.info.status == "FINISHED" and meta.data.tags["stage"] == "train"
    assert meta.data.params["method.alpha"] and meta.data.params["optim.batch_size"] == "8"
    assert {"curves/val/acc", "curves/train/loss", "epsilon/mean", "test/selected/acc"} <= set(meta.data.metrics)
    assert len(client.get_metric_history(meta.info.run_id, "curves/val/acc")) == 2  # one per epoch
    detail = json.loads((checkout / "metrics" / EXPERIMENT / "detail" / "meta_iada-s0.json").read_text())
    assert detail["selected"]["test"]["many_acc"] is None  # tiny data has no many-shot class:
    assert "test/selected/many_acc" not in meta.data.metrics  # an undefined metric is not logged
    assert {"checkpoint", "plots", "data_card.json", "metrics.json"} <= {
        a.path for a in client.list_artifacts(meta.info.run_id)}

    name = registered_model_name(EXPERIMENT)
    version = client.get_model_version_by_alias(name, CHAMPION)
    assert version.run_id == meta.info.run_id
    uri = f"models:/{name}@{CHAMPION}"
    info = mlflow.models.get_model_info(uri)
    # MLflow 3 shows a logged model's metrics on its model page: the classifier's test metrics
    # belong to the classifier model, not to the perturbation network
    network_metrics = {m.key for m in client.get_logged_model(info.model_id).metrics}
    assert "epsilon/last/mean" in network_metrics and not {k for k in network_metrics if k.startswith("test/")}
    assert "float32" in str(info.signature.inputs) and "(-1, 15)" in str(info.signature.inputs)
    assert info.saved_input_example_info is not None
    example = mlflow.models.Model.load(uri).load_input_example(mlflow.artifacts.download_artifacts(uri))
    net = mlflow.pytorch.load_model(uri)
    state = torch.load(checkout / "models" / EXPERIMENT / "s0" / "meta_iada" / "perturbation_net.pt")
    assert type(net).__name__ == "PerturbationNet" and example.shape == (4, 15)
    assert all(torch.equal(v, state[k].cpu()) for k, v in net.state_dict().items())  # the run's network
    assert net(torch.from_numpy(np.asarray(example, dtype=np.float32))).shape == (4,)

    assert list((store / "artifacts").rglob("MLmodel")), "the model files are in the server's store"
    assert [p for p in LOCAL_STORE if (checkout / p).exists()] == []


def test_a_study_logs_its_parent_and_trial_runs_through_the_server(server, checkout):
    url, store = server
    name = "through_server"
    path = write_params(checkout, name, {"method": "ce", "n_trials": 2, "pruner": {"name": "none"}}, LR_WD_SPACE)
    run(path, name)

    study = load(checkout, name)
    assert mlflow.get_tracking_uri() == url
    runs = children(study)
    assert sorted(runs["tags.optuna.trial_number"].astype(int)) == [0, 1]
    assert set(runs["tags.optuna.state"]) == {"COMPLETE"} and runs["metrics.curves/val/acc"].notna().all()
    parent = mlflow.get_run(study.user_attrs["mlflow_parent_run_id"])
    assert parent.data.metrics["best_val_acc"] == study.best_value
    artifacts = {Path(a.path).name for a in mlflow.MlflowClient().list_artifacts(parent.info.run_id, "study")}
    assert {"importances.json", "best_params.yaml"} <= artifacts
    assert list((store / "artifacts").rglob("importances.json"))
    assert [p for p in LOCAL_STORE if (checkout / p).exists()] == []
