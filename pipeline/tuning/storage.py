"""The study storage, by URL (:data:`pipeline.params.tune.STORAGES`): Optuna's RDB storage
(SQLite, PostgreSQL, MySQL) with heartbeats, SQLite made safe for several processes, Optuna's
journal file storage, dead trials failed and put back in the queue, and a compare-and-set on
study user attrs.

Dead workers. An RDB storage records a heartbeat of every RUNNING trial every
:func:`heartbeat_s`; a trial without one for :func:`grace_s` is failed (Optuna's
``fail_stale_trials``, run by every worker before each trial and by :func:`fail_dead_trials`).
Optuna 5's ``JournalStorage`` has no heartbeat (it is not a ``BaseHeartbeat``): there a trial
records its process (:data:`WORKER_ATTR`: host, pid, process start time) and a trial whose
process is gone from this host is failed at once; a journal file is one machine's storage, so
that covers every worker of a study on it. Either way a failed dead trial is put back as a
WAITING copy with the same parameters (Optuna's ``RetryHeartbeatStaleTrialCallback``, the
successor of ``RetryFailedTrialCallback``; at most :data:`MAX_RETRY` times).
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import socket
import warnings
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import optuna
import psutil
import sqlalchemy.exc
from optuna.storages import JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock
from optuna.trial import FrozenTrial, TrialState

from pipeline.errors import masked
from pipeline.params.schema import ParamError
from pipeline.params.tune import JOURNAL, journal_path, storage_kind

StudyStorage = RDBStorage | JournalStorage
HEARTBEAT_S, GRACE_S = 30, 120
GRACE_ENV = "PIPELINE_TUNE_GRACE_S"  # overrides GRACE_S (tests; impatient single-machine users)
MAX_RETRY = 2  # a dead trial is put back at most this often (a trial that kills its worker: OOM)
WORKER_ATTR = "worker"  # trial user attr: the process running it (journal storage only)
RUN_ATTRS = (WORKER_ATTR, "mlflow_run_id", "error", "seed")  # attrs of one attempt, not copied to a retry
USER_ATTRS_TABLE = sqlalchemy.table("study_user_attributes", sqlalchemy.column("study_id"),
                                    sqlalchemy.column("key"), sqlalchemy.column("value_json"))
HEARTBEATS_TABLE = sqlalchemy.table("trial_heartbeats", sqlalchemy.column("trial_id"))


@contextlib.contextmanager
def experimental_features() -> Iterator[None]:
    """Silence Optuna's ExperimentalWarning for the features used on purpose (heartbeat, plots)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


def grace_s() -> int:
    """Seconds without a heartbeat after which a RUNNING trial is failed (``GRACE_ENV`` or GRACE_S)."""
    text = os.environ.get(GRACE_ENV)
    if text is None:
        return GRACE_S
    if not text.isdigit() or int(text) < 2:
        raise ParamError(f"{GRACE_ENV} = {text!r}: a whole number of seconds >= 2")
    return int(text)


def heartbeat_s() -> int:
    """How often a RUNNING trial records its heartbeat: well within the grace."""
    return min(HEARTBEAT_S, max(1, grace_s() // 4))


class RetryDeadTrial(optuna.storages.RetryHeartbeatStaleTrialCallback):
    """Optuna's retry of a stale trial (a WAITING copy, same parameters, ``failed_trial`` and
    ``retry_history`` system attrs), without the user attrs of the dead attempt."""

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        trial = copy.deepcopy(trial)
        trial.user_attrs = {k: v for k, v in trial.user_attrs.items() if k not in RUN_ATTRS}
        super().__call__(study, trial)


def retry_dead_trial() -> RetryDeadTrial:
    with experimental_features():
        return RetryDeadTrial(max_retry=MAX_RETRY)


def open_storage(url: str) -> StudyStorage:
    """The storage of ``url``; a URL or place that cannot be used is one line (:class:`ParamError`).

    SQLite: every transaction is ``BEGIN IMMEDIATE``. Optuna claims an enqueued (WAITING) trial
    with a ``SELECT ... FOR UPDATE`` then ``UPDATE`` in one transaction; SQLite ignores
    ``FOR UPDATE`` and Python's sqlite3 only opens the transaction at the ``UPDATE``, so two
    workers could both read WAITING and both run the same trial (optuna/optuna#4002). Taking the
    write lock when the transaction begins serialises the claim (SQLAlchemy's pysqlite recipe).
    """
    kind = storage_kind(url)
    if kind == JOURNAL[:-1]:
        return open_journal(url)
    sqlite = kind == "sqlite"
    engine = {"connect_args": {"timeout": 60, "isolation_level": None}} if sqlite else {"pool_pre_ping": True}
    try:
        with experimental_features():
            storage = RDBStorage(url, engine_kwargs=engine, heartbeat_interval=heartbeat_s(), grace_period=grace_s(),
                                 heartbeat_stale_trial_callback=retry_dead_trial())
    except (ImportError, sqlalchemy.exc.SQLAlchemyError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise ParamError(f"storage {masked(url)} cannot be opened ({type(err).__name__}: {first}); "
                         "fix tune.studies.<name>.storage or --storage") from None
    if sqlite:
        sqlalchemy.event.listen(storage.engine, "begin", begin_immediate)
    return storage


def open_journal(url: str) -> JournalStorage:
    """Optuna's journal storage on a file (its folder must exist)."""
    path = journal_path(url)
    if not path.parent.is_dir():
        raise ParamError(f"storage {url}: the folder {path.parent} does not exist; create it or fix "
                         "tune.studies.<name>.storage or --storage")
    return FileJournal(path)


class FileJournal(JournalStorage):
    """Optuna's journal storage on the file ``path`` (Optuna's own lock: a symlink beside it)."""

    def __init__(self, path: Path) -> None:
        super().__init__(JournalFileBackend(str(path)))
        self.path = path


def begin_immediate(conn: sqlalchemy.engine.Connection) -> None:
    """Open every SQLite transaction with the write lock (pysqlite's own BEGIN is off)."""
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def fail_dead_trials(study: optuna.Study, storage: StudyStorage) -> None:
    """Fail the RUNNING trials of dead processes and put each back (:class:`RetryDeadTrial`).

    RDB: those without a heartbeat for the grace (Optuna's stale trials), and those that never
    had a heartbeat and started more than the grace ago (Optuna skips a RUNNING trial without a
    heartbeat row: a process killed between creating a trial and its heartbeat thread's first
    beat would leave it RUNNING for ever, holding a place in the budget and keeping
    :func:`wait_for_running` waiting). Journal: those whose process (:data:`WORKER_ATTR`) is gone
    from this host, and those that never recorded one and started more than the grace ago. A
    start time is the creating machine's clock, compared with this one's: fine for clocks kept
    within the grace of each other.
    """
    if isinstance(storage, RDBStorage):
        with experimental_features():
            optuna.storages.fail_stale_trials(study)
    running = {t._trial_id: t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    if not running:
        return
    beating: set[int] = set()
    if isinstance(storage, RDBStorage):
        with storage.engine.connect() as conn:
            column = HEARTBEATS_TABLE.c.trial_id
            beating = set(conn.execute(sqlalchemy.select(column).where(column.in_(list(running)))).scalars())
    for trial_id, t in running.items():
        worker = t.user_attrs.get(WORKER_ATTR) if isinstance(storage, JournalStorage) else None
        if worker is not None:
            dead = is_dead(worker)
        else:  # no heartbeat yet (RDB; the stale ones were failed above) or no process recorded (journal)
            dead = trial_id not in beating and datetime.now() - (t.datetime_start or datetime.now()) > timedelta(
                seconds=grace_s())
        if dead:
            with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):  # it ended meanwhile
                if storage.set_trial_state_values(trial_id, TrialState.FAIL):
                    retry_dead_trial()(study, copy.deepcopy(storage.get_trial(trial_id)))


def this_worker() -> dict[str, Any]:
    """What identifies this process on this host (the pid alone may be reused)."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": psutil.Process().create_time()}


def is_dead(worker: dict[str, Any]) -> bool:
    """Whether the process ``worker`` (:func:`this_worker`) is gone; one of another host is not judged."""
    if worker.get("host") != socket.gethostname():
        return False
    try:
        return psutil.Process(worker["pid"]).create_time() != worker["started"]
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return True


def claim_study_attr(storage: StudyStorage, study_id: int, key: str, value: Any, replacing: Any | None) -> Any:
    """Compare-and-set of a study user attr: set ``key`` to ``value`` if it is still absent
    (``replacing`` None) or still ``replacing``; returns the value it holds afterwards (``value``
    if this call won, else the winner's).

    ``Study.set_user_attr`` overwrites (the last writer wins). Here the storage decides. RDB: the
    table's unique (study_id, key) lets exactly one INSERT succeed, and an UPDATE conditional on
    the old value changes the row for exactly one writer, on SQLite and PostgreSQL alike (between
    machines too); Optuna stores a user attr as its JSON text in ``study_user_attributes``.
    Journal: the read and the write happen under a lock file beside the journal (Optuna's
    ``JournalFileOpenLock``), which every claimer takes.
    """
    if isinstance(storage, FileJournal):
        lock = JournalFileOpenLock(f"{storage.path}.claim")
        lock.acquire()
        try:
            current = storage.get_study_user_attrs(study_id).get(key)
            if current == replacing:
                storage.set_study_user_attr(study_id, key, value)
                return value
            return current
        finally:
            lock.release()
    assert isinstance(storage, RDBStorage)
    table = USER_ATTRS_TABLE
    row = (table.c.study_id == study_id) & (table.c.key == key)
    try:
        with storage.engine.begin() as conn:
            if replacing is None:
                conn.execute(sqlalchemy.insert(table).values(study_id=study_id, key=key, value_json=json.dumps(value)))
            else:
                conn.execute(sqlalchemy.update(table).where(row & (table.c.value_json == json.dumps(replacing)))
                             .values(value_json=json.dumps(value)))
    except sqlalchemy.exc.IntegrityError:
        pass  # another process inserted it first: its value stands
    with storage.engine.connect() as conn:
        return json.loads(conn.execute(sqlalchemy.select(table.c.value_json).where(row)).scalar_one())
