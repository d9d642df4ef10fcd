"""MLflow tracking, the one module that calls MLflow: one SQLite store at the project root
(or ``MLFLOW_TRACKING_URI``: another database, or a tracking server such as ``make server``),
one experiment per scenario; the prepare run, the training runs (:class:`RunTracker`), the
evaluation, and the studies' parent and trial runs.

The local store is addressed by absolute path from :func:`pipeline.layout.project_root`, so
runs started by ``dvc exp run --queue/--temp`` (which run in a temporary copy) land in the same
store; through a tracking server, the server decides where artifacts go (proxied artifact
storage), and nothing is written to the checkout. Each run is tagged with the git commit and
the DVC experiment name.
"""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator

from pipeline.errors import UserError, masked
from pipeline.layout import BEST, HISTORY, LAST, RUN_RECORD, artifact_file, json_safe, project_root
from pipeline.params.schema import flatten

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")

import mlflow  # noqa: E402  (after the telemetry switches)
from mlflow.tracking import MlflowClient  # noqa: E402

from pipeline.tracking_models import (CHAMPION, describe_version, linked_metrics, log_classifier,  # noqa: E402,F401
                                     log_dataset, log_network, promote, registered_model_name)
from pipeline.tracking_names import evaluation_metrics, metric_name  # noqa: E402


class TrackingError(UserError, RuntimeError):
    """The MLflow store cannot be used; the message names it and what to do."""


@contextmanager
def store_errors() -> Iterator[None]:
    """Turn a broken store (garbage or read-only ``mlflow.db``, an unreachable server) into one
    :class:`TrackingError` line instead of a traceback of SQLAlchemy frames."""
    import sqlite3

    import sqlalchemy.exc

    try:
        yield
    except (mlflow.exceptions.MlflowException, sqlalchemy.exc.SQLAlchemyError, sqlite3.Error, OSError) as err:
        first = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
        uri = tracking_uri()
        fix = ("see the tracking server's log" if is_server(uri) else
               "move a damaged mlflow.db aside (a new one is created)")
        raise TrackingError(f"MLflow store {masked(uri)} is not usable ({type(err).__name__}: {first}): {fix}, "
                            "point MLFLOW_TRACKING_URI at a working store, or run the stage with --no-mlflow") from err


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<project root>/mlflow.db``."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{project_root() / 'mlflow.db'}"


def artifact_root() -> Path:
    return project_root() / "mlartifacts"


def is_server(uri: str) -> bool:
    """Whether ``uri`` names a tracking server (``http(s)://``), not a database."""
    return urllib.parse.urlsplit(uri).scheme in ("http", "https")


@lru_cache(maxsize=None)
def check_server(uri: str) -> None:
    """A tracking server must answer its health check within seconds; MLflow's own client would
    retry a dead one for minutes before failing. Checked once per process and server."""
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=10) as response:
            response.read()
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise TrackingError(f"MLflow tracking server {masked(uri)} (MLFLOW_TRACKING_URI) does not answer "
                            f"({reason}): start it (make server PORT=...), fix the URL, or unset "
                            "MLFLOW_TRACKING_URI to use the local store") from None


def setup(experiment: str) -> str:
    """Point MLflow at the project store and make sure ``experiment`` exists; returns its id.

    In a local store a new experiment gets an absolute artifact location under the project root
    (fixed at creation, so it is never inside a temporary DVC copy); through a tracking server
    it gets the server's (``mlflow-artifacts:/...``, proxied by the server).
    """
    uri = tracking_uri()
    if is_server(uri):
        check_server(uri)
    mlflow.set_tracking_uri(uri)
    client = MlflowClient()
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        location = None if is_server(uri) else (artifact_root() / experiment).as_uri()
        try:
            exp_id = client.create_experiment(experiment, artifact_location=location)
        except mlflow.exceptions.MlflowException:  # created meanwhile by a parallel worker?
            exp = client.get_experiment_by_name(experiment)
            if exp is None:  # no: the store refused the write (read-only, broken)
                raise
            exp_id = exp.experiment_id
    else:
        exp_id = exp.experiment_id
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=project_root(), capture_output=True,
                             text=True, check=True, timeout=10)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def run_tags(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    tags = {"mlflow.source.git.commit": git_commit(), "git_commit": git_commit(),
            "dvc_exp_name": os.environ.get("DVC_EXP_NAME", "workspace")}
    tags.update(extra or {})
    return tags


@contextmanager
def start_run(experiment: str, run_name: str, *, run_id: str | None = None, nested: bool = False,
              tags: Mapping[str, str] | None = None) -> Iterator[mlflow.ActiveRun]:
    """Start (or, with ``run_id``, resume) a run in the scenario's experiment; inside ``dvc exp run``
    a new run's name carries the DVC experiment's (:func:`display_name`)."""
    setup(experiment)
    with mlflow.start_run(run_id=run_id, run_name=None if run_id else display_name(run_name), nested=nested,
                          tags=run_tags(tags)) as run:
        yield run


def display_name(run_name: str) -> str:
    """``run_name``, or inside ``dvc exp run`` (which exports ``DVC_EXP_NAME``) ``<run_name>
    (<DVC experiment>)``: a variant's run is then told apart from the workspace's run of the same
    experiment, method and seed in MLflow's run list (the ``dvc_exp_name`` tag holds the same)."""
    exp = os.environ.get("DVC_EXP_NAME")
    return f"{run_name} ({exp})" if exp else run_name


def log_params(params: Mapping[str, Any]) -> None:
    """Log a flat mapping of params (values stringified, long values truncated)."""
    clean = {k: str(v)[:6000] for k, v in params.items()}
    items = list(clean.items())
    for i in range(0, len(items), 100):
        mlflow.log_params(dict(items[i:i + 100]))


class RunTracker:
    """MLflow side of one training run (used by :func:`pipeline.engine.loop.fit`).

    Starts the run (or resumes the one recorded in the checkpoint), logs params once, metrics
    per epoch in one batched call (named by :func:`metric_name`), and at the end the checkpoints,
    the history, and as MLflow models the classifier (validation-selected weights) and the
    method's learned networks (registered, each version described and tagged).
    """

    def __init__(self, experiment: str, run_name: str, *, card: Mapping[str, Any] | None = None,
                 data_dir: Path | None = None, tags: Mapping[str, str] | None = None,
                 register_as: str | None = None, log_models: bool = True,
                 input_shape: tuple[int, int, int] | None = None) -> None:
        """``tags`` may hold ``mlflow.parentRunId`` (a child run, e.g. an Optuna trial's);
        ``input_shape`` (C, H, W): the classifier's input, for its logged model's signature."""
        self.experiment, self.run_name = experiment, run_name
        self.card, self.data_dir, self.input_shape = card, data_dir, input_shape
        self.params: dict[str, Any] = {}
        self.tags = dict(tags or {})
        self.register_as = register_as
        self.log_models = log_models  # Optuna trials skip the MLflow-model logging (seconds per trial)
        self.run_id: str | None = None

    def start(self, run_id: str | None, *, fingerprint: str, params: Mapping[str, Any]) -> str:
        with store_errors():
            return self._start(run_id, fingerprint=fingerprint, params=params)

    def _start(self, run_id: str | None, *, fingerprint: str, params: Mapping[str, Any]) -> str:
        setup(self.experiment)
        client = MlflowClient()
        if run_id is not None:
            try:
                client.get_run(run_id)
            except mlflow.exceptions.MlflowException:
                run_id = None  # the store was reset: start a new run
        run = mlflow.start_run(run_id=run_id, run_name=None if run_id else display_name(self.run_name),
                               tags=run_tags({**self.tags, "fingerprint": fingerprint}))
        self.run_id = run.info.run_id
        self.params = dict(params)
        if run_id is None:
            log_params(params)
            if self.card is not None:
                mlflow.log_dict(dict(self.card), "data_card.json")
                if self.data_dir is not None:
                    log_dataset(self.card, self.data_dir)
        return self.run_id

    def log_epoch(self, epoch: int, metrics: Mapping[str, float]) -> None:
        with store_errors():
            mlflow.log_metrics({metric_name(k): float(v) for k, v in metrics.items()}, step=epoch)

    def finish(self, out_dir: Path, method: Any, summary: Mapping[str, Any]) -> None:
        """Log the run's files (checkpoints, history, the method's learned networks as saved by
        the trainer) and, with ``log_models``, those networks as MLflow models, registered and
        promoted by the run ``summary``'s validation-selected value; end the run."""
        with store_errors():
            self._finish(out_dir, method, summary)

    def _finish(self, out_dir: Path, method: Any, summary: Mapping[str, Any]) -> None:
        networks = method.artifacts()
        for name in (BEST, LAST, HISTORY, RUN_RECORD, *(artifact_file(n) for n in networks)):
            if (out_dir / name).is_file():
                mlflow.log_artifact(str(out_dir / name), artifact_path="checkpoint")
        if self.log_models:
            if self.input_shape is not None and (out_dir / BEST).is_file():
                log_classifier(method.network, out_dir / BEST, self.input_shape, params=self.params)
            for name, module in networks.items():
                _, version = log_network(module, name, self.register_as, params=self.params)
                if version is not None:
                    describe_version(self.register_as, version, self.run_name, self.tags)
                    promote(self.register_as, version, summary["selection_metric"], summary["selected_value"])
        mlflow.end_run()

    def close(self, status: str = "FAILED") -> None:
        """End the run if it is still active (interrupted, failed or pruned)."""
        if mlflow.active_run() is not None:
            mlflow.end_run(status=status)


def run_exists(run_id: str) -> bool:
    """Whether the store holds ``run_id`` (False after a reset store or on another machine)."""
    mlflow.set_tracking_uri(tracking_uri())
    try:
        MlflowClient().get_run(run_id)
    except mlflow.exceptions.MlflowException as err:
        if "RESOURCE_DOES_NOT_EXIST" in str(getattr(err, "error_code", "")) or "not found" in str(err).lower():
            return False
        raise
    return True


def check_store(experiment: str) -> None:
    """Fail early (one :class:`TrackingError`) when the store cannot be used."""
    with store_errors():
        setup(experiment)


def log_prepared(mlflow_experiment: str, experiment: str, *, data_params: Mapping[str, Any],
                 counts: Mapping[str, int], seconds: float, card: Mapping[str, Any]) -> None:
    """The prepare stage's run ``<experiment>-prepare``: the data params, the split sizes, the
    time and the data card."""
    with store_errors(), start_run(mlflow_experiment, f"{experiment}-prepare",
                                   tags={"stage": "prepare", "experiment": experiment}):
        log_params(flatten({"data": dict(data_params)}))
        mlflow.log_metrics({f"n_{k}": n for k, n in counts.items()} | {"prepare_seconds": seconds})
        mlflow.log_dict(dict(card), "data_card.json")


def log_evaluation(result: Mapping[str, Any], plots: Path, experiment: str, run_name: str, *,
                   card: Mapping[str, Any] | None = None, data_dir: Path | None = None) -> None:
    """Add the test metrics (:func:`evaluation_metrics`, each logged once) and plots to the MLflow
    run that trained the weights, through the client: the finished run is not reopened, so its
    status and duration stay the training's. If the store no longer holds that run (a reset
    store, checkpoints from another machine), log to a new run ``<run_name>-evaluation`` tagged
    with the missing id, and say so.

    Each metric is linked to what it measures: ``<split>/selected/*`` to the run's logged
    ``classifier`` model (the selected weights), ``epsilon/last/*`` to its perturbation network,
    and, given the prepared data's ``card`` and ``data_dir``, every split metric to that split's
    dataset (logged as a run input), so that a model's page lists its metrics and datasets.
    Through the client, not MLflow's fluent ``log_metrics``, which would attach every metric to
    every model the run logged at the same step."""
    with store_errors():
        run_id = result.get("run_id")
        client = MlflowClient(tracking_uri())
        if not (run_id and run_exists(run_id)):
            print(f"note: MLflow run {run_id} of these weights is not in {masked(tracking_uri())}; "
                  f"logging the evaluation to a new run {run_name}-evaluation", file=sys.stderr)
            exp_id = setup(experiment)
            missing = run_id
            run_id = client.create_run(exp_id, run_name=f"{run_name}-evaluation", tags=run_tags(
                {"stage": "evaluate", "training_run_id": str(missing)})).info.run_id
            client.set_terminated(run_id)
        metrics = linked_metrics(client, run_id, evaluation_metrics(result), card, data_dir)
        for i in range(0, len(metrics), 500):
            client.log_batch(run_id, metrics=metrics[i:i + 500])
        client.log_artifacts(run_id, str(plots), artifact_path="plots")
        client.log_dict(run_id, json_safe(dict(result)), "metrics.json")


def create_run(experiment: str, run_name: str, *, tags: Mapping[str, str], params: Mapping[str, Any],
               files: Mapping[str, Any]) -> str:
    """A new, finished run holding ``params`` and the JSON ``files`` (name -> content); its id."""
    with store_errors(), start_run(experiment, run_name, tags=tags) as run:
        log_params(params)
        for name, content in files.items():
            mlflow.log_dict(content, name)
    return run.info.run_id


def log_to_run(experiment: str, run_name: str, run_id: str | None, *, metrics: Mapping[str, float],
               tags: Mapping[str, str], artifacts: Path, artifact_path: str) -> None:
    """Add metrics, tags and the files of the folder ``artifacts`` to the run ``run_id``."""
    with store_errors(), start_run(experiment, run_name, run_id=run_id):
        mlflow.log_metrics(dict(metrics))
        for key, value in tags.items():
            mlflow.set_tag(key, value)
        mlflow.log_artifacts(str(artifacts), artifact_path=artifact_path)


def is_active_run(run_id: str) -> bool:
    """Whether the store holds ``run_id`` and it is not deleted."""
    mlflow.set_tracking_uri(tracking_uri())
    try:
        return MlflowClient().get_run(run_id).info.lifecycle_stage == "active"
    except mlflow.exceptions.MlflowException:
        return False


def delete_run(run_id: str) -> None:
    MlflowClient(tracking_uri()).delete_run(run_id)


def end_trial_run(tracker: RunTracker, tags: Mapping[str, str], values: Mapping[str, Any], state: str) -> None:
    """Tag an Optuna trial's child run with its final state (a trial that failed before training
    started, e.g. on an invalid value, gets a failed child run holding its values)."""
    if tracker.run_id is not None:
        MlflowClient().set_tag(tracker.run_id, "optuna.state", state)
        return
    with start_run(tracker.experiment, tracker.run_name, tags={**tags, **tracker.tags, "optuna.state": state}) as run:
        log_params(values)
        tracker.run_id = run.info.run_id
        mlflow.end_run("FAILED")


def end_orphan_trial_runs(experiment: str, study_name: str, finished: Mapping[int, str]) -> list[str]:
    """End as FAILED the child runs still RUNNING of trials that the study holds as finished
    (``finished``: trial number -> Optuna state): a killed worker's trial, failed after its
    heartbeat stopped, left its run open. Returns their run ids."""
    with store_errors():
        client = MlflowClient()
        runs = client.search_runs([setup(experiment)], filter_string=(
            f"tags.`optuna.study_name` = '{study_name}' and attributes.status = 'RUNNING'"))
        ended = []
        for r in runs:
            number = int(r.data.tags.get("optuna.trial_number", -1))
            if number in finished:
                client.set_tag(r.info.run_id, "optuna.state", finished[number])
                client.set_terminated(r.info.run_id, "FAILED")
                ended.append(r.info.run_id)
        return ended
