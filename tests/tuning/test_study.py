"""Optuna studies end to end on tiny data: parallel workers on one SQLite storage, pruning,
resuming, failed trials, sweeps, MLflow nesting, the analysis files, and config validation; a
killed worker, failures in a row and concurrent invocations of one study."""

from __future__ import annotations

import csv
import functools
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import mlflow
import optuna
import pytest
import torch
import yaml
from optuna.trial import TrialState

from pipeline.stages import tune as tune_stage
from pipeline.tuning import budget as tuning_budget
from pipeline.tuning import objective as tuning_objective
from pipeline.tuning import storage as tuning_storage
from pipeline.tuning import study as tuning_study
from pipeline.tuning import workers as tuning_workers
from pipeline.params.schema import ParamError, build, to_dict
from pipeline.data.prepared import save_prepared
from pipeline.params.experiment import ExperimentConfig
from pipeline.params.file import load_params, parse_params
from pipeline.params.tune import make_plan
from pipeline.tracking import setup
from tests.postgres import postgres_server
from tests.tiny import tiny_data, tiny_experiment

ROOT = Path(__file__).resolve().parents[2]
EXPERIMENT = "tiny"
MLFLOW_EXPERIMENT = "long-tail"
# Validation accuracy per trial epoch from the shared random init (seed 0, meta_iada, 2 epochs):
# lr 0.05 -> [0.72, 0.94], lr 0.06 -> [0.94, 1.0] (dominates 0.05 at every epoch), lr 1e-6 ->
# [0.33, 0.33] (never learns: pruned against any complete lr-0.05 trial at epoch 0).
GOOD_LR, BETTER_LR, BAD_LR = 0.05, 0.06, 1e-6
LR_WD_SPACE = {"optim.lr": {"type": "float", "low": 1e-6, "high": 0.2, "log": True},
               "optim.weight_decay": {"type": "float", "low": 1e-5, "high": 1e-3, "log": True}}


def experiment_dict() -> dict[str, Any]:
    """The tiny experiment as params.yaml data: no pretraining epochs, so every trial starts from
    the seeded random init and a useless learning rate shows at the first epoch."""
    exp = tiny_experiment(pretrain_epochs=0, train_epochs=2,
                          optim={"lr": GOOD_LR, "batch_size": 8, "warmup_epochs": 0, "milestones": []})
    raw = {**to_dict(exp), "methods": {"ce": {}, "la": {}, "meta_iada": {}}}
    del raw["search"]  # written under tune.search
    return raw


def write_params(root: Path, name: str, study: dict[str, Any], search: dict[str, Any], url: str | None = None) -> Path:
    """A params file declaring experiment ``tiny`` and study ``name`` (storage: ``url``, default <root>/<name>.db)."""
    raw = {"run": {"experiments": [EXPERIMENT], "methods": ["ce"], "seeds": [0], "device": "cpu"},
           "experiments": {EXPERIMENT: experiment_dict()},
           "tune": {"studies": {name: {"experiment": EXPERIMENT, "storage": url or storage(root, name), **study}},
                    "search": {EXPERIMENT: search}}}
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def storage(root: Path, name: str) -> str:
    return f"sqlite:///{root / name}.db"


def run(path: Path, name: str, *args: str) -> None:
    assert tune_stage.main(["--params", str(path), "--study", name, *args]) == 0


def load(root: Path, name: str, url: str | None = None) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=tuning_storage.open_storage(url or storage(root, name)))


def distinct_configs(study: optuna.Study) -> int:
    """The budget's unit, counted here without the budget's code: distinct parameter values among
    the COMPLETE and PRUNED trials (a repeat of a finished config counts once)."""
    finished = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    return len({tuple(sorted(t.params.items())) for t in finished})


def children(study: optuna.Study) -> Any:
    parent = study.user_attrs[tuning_study.PARENT_RUN_ATTR]
    return mlflow.search_runs(experiment_names=[MLFLOW_EXPERIMENT],
                              filter_string=f"tags.mlflow.parentRunId = '{parent}'")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A project root in tmp: prepared tiny data, one migrated MLflow store, cwd and DVC_ROOT there;
    one torch thread in this process, as each of two workers gets on two cores."""
    root = tmp_path_factory.mktemp("tune")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("DVC_ROOT", str(root))
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        save_prepared(tiny_data(per_class=(24, 16, 12)), root / "data" / "prepared" / EXPERIMENT)
        setup(MLFLOW_EXPERIMENT)
        yield root
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    """The URL of a throw-away PostgreSQL server (skipped only where none is installed, never in CI)."""
    with postgres_server() as url:
        yield url


@pytest.fixture(params=["sqlite", "journal", "postgresql"])
def storage_url(request: pytest.FixtureRequest, workspace: Path) -> str:
    """A study storage of each kind, for a study named after the test."""
    name = request.node.originalname
    if request.param == "postgresql":
        return request.getfixturevalue("postgres")
    return storage(workspace, name) if request.param == "sqlite" else f"journal:{workspace / name}.journal"


def test_two_workers_run_exactly_n_trials_nested_pruned_and_analysed(workspace):
    name = "parallel"
    path = write_params(workspace, name, {"n_trials": 5, "workers": 2,
                                          "pruner": {"n_startup_trials": 1, "n_warmup_steps": 0}}, LR_WD_SPACE)
    queued = optuna.create_study(study_name=name, storage=storage(workspace, name), direction="maximize")
    # With two workers either of trials 0 and 1 may be the one pruned. Trials 3 and 4 (always
    # complete) have weight decays on either side of theirs: both parameters vary, and lr alone
    # sets the better trials apart, so fANOVA ranks it first whatever its seed.
    for lr, wd in ((GOOD_LR, 2e-4), (GOOD_LR, 3e-4), (BAD_LR, 1e-4), (BETTER_LR, 1e-4), (BETTER_LR, 5e-4)):
        queued.enqueue_trial({"optim.lr": lr, "optim.weight_decay": wd})

    run(path, name)

    study = load(workspace, name)
    assert study.metric_names == ["val_acc"]  # the dashboard names the objective
    trials = study.get_trials()
    finished = [t for t in trials if t.state in tuning_budget.FINISHED]
    assert len(finished) == 5
    assert len({t.number for t in trials}) == len(trials)
    assert all(t.user_attrs.get("surplus") for t in trials if t.state == TrialState.FAIL)
    assert trials[2].state == TrialState.PRUNED  # the useless lr, stopped by the median pruner
    assert trials[3].state == trials[4].state == TrialState.COMPLETE and study.best_trial.number in (3, 4)
    assert study._study_id == queued._study_id

    runs = children(study)
    assert len(runs) == 5
    assert sorted(runs["tags.optuna.trial_number"].astype(int)) == [t.number for t in finished]
    states = dict(zip(runs["tags.optuna.trial_number"].astype(int), runs["tags.optuna.state"]))
    assert states == {t.number: t.state.name for t in finished}
    assert set(runs["tags.optuna.study_name"]) == {name}

    out = workspace / "studies" / name
    imp = json.loads((out / "importances.json").read_text())
    assert imp["evaluator"] == "FanovaImportanceEvaluator"
    assert set(imp["importances"]) == {"optim.lr", "optim.weight_decay"}
    assert max(imp["importances"], key=imp["importances"].get) == "optim.lr"
    for png in ("param_importances", "slice", "contour", "parallel_coordinate", "optimization_history"):
        assert (out / f"{png}.png").stat().st_size > 1000, png
    with open(out / "trials.csv") as f:
        assert len(list(csv.DictReader(f))) == len(trials)
    best = yaml.safe_load((out / "best_params.yaml").read_text())
    assert best["params"] == study.best_trial.params and best["params"]["optim.lr"] == BETTER_LR
    assert best["metric"] == "val_acc" and best["value"] == study.best_value
    summary = json.loads((out / "summary.json").read_text())
    # trial 2 is always pruned; one of trials 0 and 1 is too when it reports after the other
    # completed with a better value (it depends on how the two workers interleave)
    n_pruned = sum(t.state == TrialState.PRUNED for t in finished)
    assert n_pruned in (1, 2) and (summary["n_complete"], summary["n_pruned"]) == (5 - n_pruned, n_pruned)
    parent = mlflow.get_run(study.user_attrs[tuning_study.PARENT_RUN_ATTR])
    assert parent.data.metrics["best_val_acc"] == study.best_value
    assert parent.data.params["sampler"] == "tpe" and parent.data.params["pruner"] == "MedianPruner"
    artifacts = {Path(a.path).name for a in mlflow.MlflowClient().list_artifacts(parent.info.run_id, "study")}
    assert {"importances.json", "slice.png", "best_params.yaml"} <= artifacts


def test_rerun_resumes_the_same_study_and_refuses_a_changed_experiment(workspace, capsys):
    name = "resume"
    path = write_params(workspace, name, {"method": "ce", "n_trials": 2, "pruner": {"name": "none"}}, LR_WD_SPACE)
    run(path, name)
    first = load(workspace, name)
    assert len(first.trials) == 2

    run(path, name)  # finished: runs nothing
    assert len(load(workspace, name).trials) == 2

    run(path, name, "--n-trials", "3")
    again = load(workspace, name)
    assert again._study_id == first._study_id
    assert [t.state for t in again.trials] == [TrialState.COMPLETE] * 3
    assert len(children(again)) == 3
    assert len({tuple(sorted(t.params.items())) for t in again.trials}) == 3  # new suggestions, no replay

    raw = yaml.safe_load(path.read_text())
    raw["experiments"][EXPERIMENT]["optim"]["momentum"] = 0.5
    path.write_text(yaml.safe_dump(raw))
    capsys.readouterr()
    assert tune_stage.main(["--params", str(path), "--study", name, "--n-trials", "4"]) == 2
    err = capsys.readouterr().err
    assert "settings.optim.momentum = 0.9" in err and err.count("\n") == 1
    assert len(load(workspace, name).trials) == 3
    # the message ends with the command that deletes the stored study: it works, and the study starts afresh
    command = err.strip().rpartition("delete the stored study and its trials with: ")[2]
    assert command == f"optuna delete-study --study-name {name} --storage sqlite:///{workspace / name}.db"
    subprocess.run([str(Path(sys.executable).parent / "optuna"), *command.split()[1:]], check=True, capture_output=True)
    run(path, name, "--n-trials", "1")
    assert len(load(workspace, name).trials) == 1


@pytest.mark.filterwarnings("ignore:Heartbeat of storage:UserWarning")
def test_concurrent_workers_never_claim_the_same_enqueued_trial(tmp_path):
    """Optuna claims a WAITING trial by reading its state and then setting RUNNING; on SQLite
    without ``open_storage``'s BEGIN IMMEDIATE two workers both read WAITING and run the same trial
    (about every other round here with plain ``RDBStorage``). Each round: one enqueued trial, four
    workers asking at once; exactly one gets it and the others get new, distinct trials."""
    workers = 4
    for round_ in range(12):
        url = f"sqlite:///{tmp_path / f'race{round_}.db'}"
        optuna.create_study(study_name="race", storage=tuning_storage.open_storage(url)).enqueue_trial({"x": 1.0})
        studies = [optuna.load_study(study_name="race", storage=tuning_storage.open_storage(url))
                   for _ in range(workers)]
        barrier = threading.Barrier(workers)
        numbers: list[int] = []

        def ask(study: optuna.Study) -> None:
            barrier.wait()
            numbers.append(study.ask().number)

        threads = [threading.Thread(target=ask, args=(s,)) for s in studies]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(numbers) == list(range(workers)), f"round {round_}: trials {numbers}"  # 0 once


@pytest.mark.filterwarnings("ignore:Fixed parameter optim.momentum:UserWarning")  # out of range on purpose
def test_a_failing_trial_is_recorded_and_the_study_goes_on(workspace):
    name = "failing"
    space = {"optim.momentum": {"type": "float", "low": 0.0, "high": 0.95}}
    path = write_params(workspace, name, {"method": "ce", "n_trials": 2, "pruner": {"name": "none"}}, space)
    queued = optuna.create_study(study_name=name, storage=storage(workspace, name), direction="maximize")
    queued.enqueue_trial({"optim.momentum": 1.5})  # outside OptimConfig's bounds: fails like a bad param

    run(path, name)

    study = load(workspace, name)
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]
    assert "optim.momentum = 1.5" in study.trials[0].user_attrs["error"]
    states = dict(zip(children(study)["tags.optuna.trial_number"], children(study)["tags.optuna.state"]))
    assert states == {"0": "FAIL", "1": "COMPLETE", "2": "COMPLETE"}


def tune_command(path: Path, name: str) -> list[str]:
    return [sys.executable, "-m", "pipeline.stages.tune", "--params", str(path), "--study", name]


def tune_env(**extra: str) -> dict[str, str]:
    """This environment, importing this checkout's ``pipeline`` (not another one's editable install)."""
    return {**os.environ, "PYTHONPATH": str(ROOT), **extra}


def test_a_killed_worker_is_reported_the_study_analysed_and_a_rerun_finishes_it(workspace, monkeypatch, storage_url):
    """Worker 1 of 2 is SIGKILLed after its first trial's first epoch (``tuning_objective.KILL_WORKER_ENV``):
    the command names it in one line, analyses what the study holds, exits 1 with one line. On an
    RDB storage the dead trial stays RUNNING until it has had no heartbeat for the grace; on a
    journal (no heartbeat in Optuna 5) it is failed at once, its process being gone. Then the same
    command fails it, runs it again with the same parameters (a WAITING copy) and nothing more,
    and ends the dead trial's MLflow child run as FAILED."""
    kind = storage_url.partition(":")[0].partition("+")[0]
    name = f"killed_{kind}"
    path = write_params(workspace, name, {"method": "ce", "n_trials": 3, "workers": 2,
                                          "pruner": {"name": "none"}}, LR_WD_SPACE, storage_url)
    env = tune_env(**{tuning_objective.KILL_WORKER_ENV: f"{name}-w1"})
    proc = subprocess.run(tune_command(path, name), env=env, capture_output=True, text=True, timeout=600)

    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert [line for line in proc.stderr.splitlines() if line.startswith(f"[{name}] worker ")] == [
        f"[{name}] worker {name}-w1: killed by SIGKILL"]
    # Python's resource tracker may add a warning about the semaphore the killed process left
    ours = [line for line in proc.stderr.strip().splitlines() if "resource_tracker" not in line]
    error = ours[-1]
    assert error.startswith(f"error: study '{name}' ended with 2 of its 3 trials done"), error
    assert "1 worker(s) died" in error and "rerun the same command" in error
    summary = json.loads((workspace / "studies" / name / "summary.json").read_text())
    assert summary["n_complete"] == 2 and summary["storage"] == storage_url  # no password in these URLs
    trials = load(workspace, name, storage_url).trials
    if kind == "journal":
        assert "stay RUNNING" not in error
        [killed] = [t for t in trials if t.state == TrialState.FAIL]
        assert [t.system_attrs["failed_trial"] for t in trials if t.state == TrialState.WAITING] == [killed.number]
    else:
        assert "stay RUNNING" in error
        [killed] = [t for t in trials if t.state == TrialState.RUNNING]
        monkeypatch.setattr(tuning_storage, "GRACE_S", 1)
        time.sleep(2)  # past the grace by SQLite's clock, which counts whole seconds

    run(path, name)
    study = load(workspace, name, storage_url)
    assert distinct_configs(study) == 3
    assert study.trials[killed.number].state == TrialState.FAIL
    [again] = [t for t in study.trials if t.system_attrs.get("failed_trial") == killed.number]
    assert again.state == TrialState.COMPLETE and again.params == killed.params
    assert again.user_attrs["mlflow_run_id"] != killed.user_attrs.get("mlflow_run_id")
    child = mlflow.search_runs(experiment_names=["long-tail"], output_format="list", filter_string=(
        f"tags.`optuna.study_name` = '{name}' and tags.`optuna.trial_number` = '{killed.number}'"))
    assert [(r.info.status, r.data.tags["optuna.state"]) for r in child] == [("FAILED", "FAIL")]


def test_two_invocations_on_postgresql_share_nothing_but_the_url(workspace, postgres):
    """Two commands of one worker each, as on two machines: the first is SIGKILLed in its first
    trial; the second, once its own trials are done (within the 20 s grace), waits for the dead
    trial's heartbeat to go stale, runs it again, and ends with exactly the budget."""
    name = "two_machines"
    path = write_params(workspace, name, {"method": "ce", "n_trials": 3, "pruner": {"name": "none"}},
                        LR_WD_SPACE, postgres)
    optuna.create_study(study_name=name, storage=tuning_storage.open_storage(postgres), direction="maximize")
    params = load_params(path)
    tuning_objective.ensure_pretrain(params, make_plan(params, name))
    env = tune_env(**{tuning_storage.GRACE_ENV: "20"})
    first = subprocess.Popen(tune_command(path, name), env={**env, tuning_objective.KILL_WORKER_ENV: "MainProcess"},
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not load(workspace, name, postgres).get_trials(states=(TrialState.RUNNING,)):
        assert time.monotonic() < deadline and first.poll() is None, first.communicate()
        time.sleep(0.2)
    second = subprocess.run(tune_command(path, name), env=env, capture_output=True, text=True, timeout=600)
    first.communicate(timeout=60)

    assert first.returncode == -9
    assert second.returncode == 0, second.stderr
    assert f"[{name}] waiting for trials" in second.stdout  # its own trials ended before the grace
    study = load(workspace, name, postgres)
    assert distinct_configs(study) == 3
    [killed] = [t for t in study.trials if t.state == TrialState.FAIL]
    [again] = [t for t in study.trials if t.system_attrs.get("failed_trial") == killed.number]
    assert again.state == TrialState.COMPLETE and again.params == killed.params
    runs = children(study)
    trained = [t.number for t in study.trials if tuning_budget.REPEAT_ATTR not in t.user_attrs]  # a repeat: no run
    assert sorted(runs["tags.optuna.trial_number"].astype(int)) == trained
    states = dict(zip(runs["tags.optuna.trial_number"].astype(int), runs["status"]))
    assert states[killed.number] == "FAILED" and list(states.values()).count("FINISHED") == 3


@pytest.mark.filterwarnings("ignore:Fixed parameter optim.momentum:UserWarning")  # out of range on purpose
@pytest.mark.filterwarnings("ignore:No artists with labels:UserWarning")  # plots of a study without values
def test_a_bf16_study_on_a_device_without_bf16_stops_before_its_storage_exists(workspace, monkeypatch, capsys):
    from pipeline.engine import build as engine_build

    name = "bf16"
    path = write_params(workspace, name, {"method": "ce", "n_trials": 1}, LR_WD_SPACE)
    raw = yaml.safe_load(path.read_text())
    raw["experiments"][EXPERIMENT]["network"]["precision"] = "bf16"
    path.write_text(yaml.safe_dump(raw))
    monkeypatch.setattr(engine_build, "native_bf16", lambda device: False)
    monkeypatch.delenv(engine_build.EMULATED_BF16_ENV, raising=False)
    capsys.readouterr()
    assert tune_stage.main(["--params", str(path), "--study", name]) == 2
    assert capsys.readouterr().err.startswith("error: network.precision = bf16, but ")
    assert not (workspace / f"{name}.db").exists()


def test_failures_in_a_row_end_the_study_with_one_line_and_exit_1(workspace, capsys):
    name = "broken"
    space = {"optim.momentum": {"type": "float", "low": 0.0, "high": 0.95}}
    path = write_params(workspace, name, {"method": "ce", "n_trials": 2, "pruner": {"name": "none"}}, space)
    queued = optuna.create_study(study_name=name, storage=storage(workspace, name), direction="maximize")
    for _ in range(tuning_budget.MAX_FAILURES_IN_A_ROW):
        queued.enqueue_trial({"optim.momentum": 1.5})  # outside OptimConfig's bounds: every trial fails
    capsys.readouterr()

    assert tune_stage.main(["--params", str(path), "--study", name]) == 1

    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1
    assert errors[0].startswith(f"error: study '{name}' ended with 0 of its 2 trials done")
    assert f"{tuning_budget.MAX_FAILURES_IN_A_ROW} trial(s) failed in a row, the last with ParamError: " in errors[0]
    assert "optim.momentum = 1.5" in errors[0]
    assert [t.state for t in load(workspace, name).trials] == [TrialState.FAIL] * tuning_budget.MAX_FAILURES_IN_A_ROW
    assert json.loads((workspace / "studies" / name / "summary.json").read_text())["n_fail"] == 5


# `python -c RACE_TO_THE_PARENT_RUN BARRIER N ARGS...` runs `python -m pipeline.stages.tune ARGS...`, its
# parent_run held until N processes have reached it (one file each in BARRIER): they all look for
# the study's parent run at the same moment.
RACE_TO_THE_PARENT_RUN = """
import os, sys, time
from pathlib import Path
from pipeline.stages import tune as tune_stage
from pipeline.tuning import study as tune

barrier, n = Path(sys.argv[1]), int(sys.argv[2])
find_parent = tune.parent_run


def all_at_once(*args):
    (barrier / str(os.getpid())).touch()
    deadline = time.monotonic() + 60
    while len(list(barrier.iterdir())) < n and time.monotonic() < deadline:
        time.sleep(0.01)
    return find_parent(*args)


tune.parent_run = all_at_once
raise SystemExit(tune_stage.main(sys.argv[3:]))
"""


def test_two_invocations_at_once_share_one_parent_run(workspace, tmp_path):
    """Both start from a study without a parent run; before the fix each created one and kept it."""
    name = "concurrent"
    path = write_params(workspace, name, {"method": "ce", "n_trials": 2, "pruner": {"name": "none"}}, LR_WD_SPACE)
    # The storage's tables and the pretraining exist already: two processes creating either at once
    # is another race than the parent run's.
    optuna.create_study(study_name=name, storage=storage(workspace, name), direction="maximize")
    params = load_params(path)
    tuning_objective.ensure_pretrain(params, make_plan(params, name))
    cmd = [sys.executable, "-c", RACE_TO_THE_PARENT_RUN, str(tmp_path), "2", *tune_command(path, name)[3:]]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=tune_env())
             for _ in range(2)]
    outputs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err for _, err in outputs]

    study = load(workspace, name)
    # two distinct configs (the workers' samplers share a seed: a trial drawing a finished trial's
    # values takes its value untrained and does not count)
    assert distinct_configs(study) == 2
    runs = mlflow.search_runs(experiment_names=[MLFLOW_EXPERIMENT],
                              filter_string=f"tags.`optuna.study_name` = '{name}'")  # active runs only
    parents = runs[runs["tags.mlflow.parentRunId"].isna()]
    assert list(parents["run_id"]) == [study.user_attrs[tuning_study.PARENT_RUN_ATTR]]
    kids = runs[runs["tags.mlflow.parentRunId"].notna()]
    assert set(kids["tags.mlflow.parentRunId"]) == set(parents["run_id"])
    assert len(kids) == len([t for t in study.trials if not t.user_attrs.get("surplus")
                             and tuning_budget.REPEAT_ATTR not in t.user_attrs])  # a repeat trains nothing


def test_claiming_a_study_attr_is_compare_and_set(tmp_path):
    """What two processes racing for the parent run get, in either order: the first claim stands."""
    url = f"sqlite:///{tmp_path / 'cas.db'}"
    study = optuna.create_study(study_name="cas", storage=tuning_storage.open_storage(url))
    claim = functools.partial(tuning_storage.claim_study_attr, tuning_storage.open_storage(url), study._study_id, "run")
    assert claim("a", replacing=None) == "a"
    assert claim("b", replacing=None) == "a"  # already set: not overwritten
    assert claim("c", replacing="a") == "c"
    assert claim("d", replacing="a") == "c"  # replaced meanwhile by another: not overwritten
    assert study.user_attrs["run"] == "c"


@pytest.mark.filterwarnings("ignore:Heartbeat of storage:UserWarning")
def test_a_trial_that_never_had_a_heartbeat_is_failed_after_the_grace(tmp_path, monkeypatch):
    """A process killed between creating a trial and its first heartbeat leaves a RUNNING trial that
    Optuna's fail_stale_trials never fails: it would hold a place in the budget for ever."""
    monkeypatch.setattr(tuning_storage, "GRACE_S", 1)
    storage_ = tuning_storage.open_storage(f"sqlite:///{tmp_path / 'orphan.db'}")
    study = optuna.create_study(study_name="orphan", storage=storage_)
    study.ask()  # RUNNING, and no heartbeat thread: as if its process died at once
    tuning_storage.fail_dead_trials(study, storage_)
    assert study.trials[0].state == TrialState.RUNNING  # within the grace
    time.sleep(1.5)
    tuning_storage.fail_dead_trials(study, storage_)
    assert study.trials[0].state == TrialState.FAIL


@pytest.mark.filterwarnings("ignore:Heartbeat of storage:UserWarning")
def test_an_invocation_waits_for_the_trials_running_elsewhere(tmp_path, monkeypatch):
    """Once its workers have ended, an invocation waits for the trials RUNNING in another one (they
    count toward the budget) and for a killed process's trial to be failed and put back."""
    monkeypatch.setattr(tuning_storage, "GRACE_S", 1)
    monkeypatch.setattr(tuning_workers, "WAIT_POLL_S", 0.1)
    storage_ = tuning_storage.open_storage(f"sqlite:///{tmp_path / 'elsewhere.db'}")
    study = optuna.create_study(study_name="elsewhere", storage=storage_)
    running, _killed = study.ask(), study.ask()  # the first is told below, the second never
    other_invocation = threading.Timer(0.5, study.tell, args=(running, 1.0))
    other_invocation.start()
    tuning_workers.wait_for_running(study, storage_, SimpleNamespace(name="elsewhere"))
    states = [t.state for t in study.trials]
    other_invocation.join()
    assert states == [TrialState.COMPLETE, TrialState.FAIL, TrialState.WAITING]  # the dead one put back
    assert study.trials[2].system_attrs["failed_trial"] == 1


def test_sweep_evaluates_the_grid_over_seeds(workspace):
    name = "sweep"
    values, seeds = [GOOD_LR, BETTER_LR], [0, 1]
    study_cfg = {"method": "ce", "mode": "sweep", "param": "optim.lr", "values": values, "seeds": seeds}
    run(write_params(workspace, name, study_cfg, {}), name)

    out = workspace / "studies" / name
    with open(out / "sweep.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted((float(r["value"]), int(r["seed"])) for r in rows) == [(v, s) for v in values for s in seeds]
    study = load(workspace, name)
    by_point = {(t.params["optim.lr"], t.params["seed"]): t.value for t in study.trials}
    assert {(float(r["value"]), int(r["seed"])): float(r["val_acc"]) for r in rows} == by_point
    summary = json.loads((out / "sweep.json").read_text())
    assert [p["value"] for p in summary["values"]] == values
    for p in summary["values"]:
        scores = [by_point[(p["value"], s)] for s in seeds]
        assert p["mean"] == pytest.approx(sum(scores) / 2)
        assert p["std"] == pytest.approx(abs(scores[0] - scores[1]) / 2 ** 0.5)
    assert (out / "sweep.png").stat().st_size > 1000
    assert (workspace / "models" / EXPERIMENT / "s1" / "pretrain" / "last.pt").is_file()


@pytest.mark.filterwarnings("ignore:Attempting to set identical:UserWarning")  # one-point plots
def test_a_one_point_sweep_runs(workspace):
    """One value and one seed is a valid sweep (Optuna's GridSampler used to fail on it after the
    trial, outside the objective's error handling)."""
    name = "one_point"
    study_cfg = {"method": "ce", "mode": "sweep", "param": "optim.lr", "values": [GOOD_LR], "seeds": [0]}
    run(write_params(workspace, name, study_cfg, {}), name)
    study = load(workspace, name)
    assert [(t.state, t.params["optim.lr"]) for t in study.trials] == [(TrialState.COMPLETE, GOOD_LR)]


def bad_space_error(search: dict[str, Any]) -> str:
    with pytest.raises(ParamError) as err:  # the search block is parsed with its experiment
        build(ExperimentConfig, {**experiment_dict(), "search": search}, f"experiments.{EXPERIMENT}")
    return str(err.value)


@pytest.mark.parametrize("search, expected", [
    ({"optim.lr": {"type": "uniform", "low": 0.01, "high": 0.1}}, "tune.search.tiny.optim.lr.type"),
    ({"optim.lr": {"type": "float", "low": 0.1, "high": 0.1}}, "tune.search.tiny.optim.lr: low"),
    ({"optim.lr": {"type": "float", "low": 0.0, "high": 0.1, "log": True}}, "tune.search.tiny.optim.lr: log"),
    ({"optim.learning_rate": {"type": "float", "low": 0.01, "high": 0.1}}, "'optim.learning_rate' is not a key"),
    ({"methods.meta_iada.gamma": {"type": "float", "low": 0.1, "high": 1.0}}, "'methods.meta_iada.gamma' is not a key"),
    ({"data.seed": {"type": "int", "low": 0, "high": 3}}, "'data.seed' cannot be tuned"),
    ({"methods.meta_iada.alpha": {"type": "categorical"}}, "tune.search.tiny.methods.meta_iada.alpha.choices"),
    # values the experiment refuses: caught up front, not at trial time
    ({"methods.meta_iada.alpha": {"type": "categorical", "choices": [0.5, -1.0]}},
     "tune.search.tiny.methods.meta_iada.alpha: the value -1.0 is not allowed"),
    ({"methods.meta_iada.beta": {"type": "categorical", "choices": [1.0, 0.0]}},
     "tune.search.tiny.methods.meta_iada.beta: the value 0.0 is not allowed for methods.meta_iada.beta"),
    ({"optim.momentum": {"type": "float", "low": 0.5, "high": 1.5}},
     "tune.search.tiny.optim.momentum: the value 1.5 is not allowed"),
    ({"methods.meta_iada.meta_interval": {"type": "int", "low": 0, "high": 3}},
     "tune.search.tiny.methods.meta_iada.meta_interval: the value 0 is not allowed"),
])
def test_invalid_search_space_names_the_key(search, expected):
    assert expected in bad_space_error(search)


@pytest.mark.parametrize("study, expected", [
    ({"experiment": "nope", "n_trials": 2}, "tune.studies.s.experiment = 'nope'"),
    ({"experiment": EXPERIMENT}, "missing key tune.studies.s.n_trials"),
    ({"experiment": EXPERIMENT, "n_trials": 2, "params": ["optim.momentum"]}, "tune.studies.s.params[0]"),
    ({"experiment": EXPERIMENT, "n_trials": 2, "sampler": {"name": "cmaes"}}, "tune.studies.s.sampler.name"),
    ({"experiment": EXPERIMENT, "mode": "sweep", "param": "optim.lr", "values": [0.1, -1.0]},
     "tune.studies.s.values[1] = -1.0"),
    ({"experiment": EXPERIMENT, "n_trials": 2, "storage": "redis://127.0.0.1/0"},
     "tune.studies.s.storage: unknown storage scheme 'redis'; use one of: sqlite:///PATH"),
    ({"experiment": EXPERIMENT, "n_trials": 2, "storage": "journal:"}, "a journal storage needs a file"),
])
def test_invalid_study_names_the_key(study, expected):
    raw = {"run": {"experiments": [EXPERIMENT]}, "experiments": {EXPERIMENT: experiment_dict()},
           "tune": {"run": ["s"], "studies": {"s": study}, "search": {EXPERIMENT: LR_WD_SPACE}}}
    with pytest.raises(ParamError) as err:
        parse_params(raw)  # the tune section is parsed with the rest
    assert expected in str(err.value)


def test_unknown_study_is_one_clear_line(workspace, capsys):
    path = write_params(workspace, "known", {"n_trials": 1}, LR_WD_SPACE)
    assert tune_stage.main(["--params", str(path), "--study", "unknown"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: unknown study 'unknown'") and "\n" not in err


def test_a_journal_in_a_missing_folder_is_one_line_before_any_work(workspace, capsys):
    path = write_params(workspace, "nowhere", {"n_trials": 1}, LR_WD_SPACE)
    missing = workspace / "no-such-folder"
    assert tune_stage.main(["--params", str(path), "--study", "nowhere",
                            "--storage", f"journal:{missing}/s.journal"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"error: storage journal:{missing}/s.journal: the folder {missing} does not exist; create it or "
                   "fix tune.studies.<name>.storage or --storage")
    assert not missing.exists() and not (workspace / "studies" / "nowhere").exists()


def test_the_storage_may_come_from_the_environment_off_the_command_line(tmp_path, monkeypatch):
    """``make tune STORAGE=...`` passes the URL (maybe with a password) as META_IADA_STORAGE, which
    other local users cannot read, unlike a command line; --storage still wins."""
    path = write_params(tmp_path, "from_env", {"n_trials": 1}, LR_WD_SPACE)
    plans = []
    monkeypatch.setattr(tune_stage, "run_study", lambda params, plan: plans.append(plan))
    url = "postgresql://me:secret@127.0.0.1:5432/optuna"
    monkeypatch.setenv("META_IADA_STORAGE", url)
    assert tune_stage.main(["--params", str(path), "--study", "from_env"]) == 0
    assert tune_stage.main(["--params", str(path), "--study", "from_env", "--storage", storage(tmp_path, "x")]) == 0
    assert [plan.storage for plan in plans] == [url, storage(tmp_path, "x")]


def test_missing_data_is_one_line_before_the_study_is_created(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    path = write_params(tmp_path, "no_data", {"n_trials": 1}, LR_WD_SPACE)
    assert tune_stage.main(["--params", str(path), "--study", "no_data"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: no prepared data set at ") and "\n" not in err
    assert not (tmp_path / "no_data.db").exists()  # no storage, no study left behind
