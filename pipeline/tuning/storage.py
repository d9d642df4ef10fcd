"""The study storage: Optuna's RDB storage with heartbeats, made safe for several processes on
SQLite, stale-trial clean-up, and a compare-and-set on study user attrs."""

from __future__ import annotations

import contextlib
import json
import warnings
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import optuna
import sqlalchemy.exc
from optuna.trial import TrialState

from pipeline.params.schema import ParamError
from pipeline.tracking import masked

HEARTBEAT_S, GRACE_S = 30, 120
USER_ATTRS_TABLE = sqlalchemy.table("study_user_attributes", sqlalchemy.column("study_id"),
                                    sqlalchemy.column("key"), sqlalchemy.column("value_json"))
HEARTBEATS_TABLE = sqlalchemy.table("trial_heartbeats", sqlalchemy.column("trial_id"))


@contextlib.contextmanager
def experimental_features() -> Iterator[None]:
    """Silence Optuna's ExperimentalWarning for the features used on purpose (heartbeat, plots)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


def open_storage(url: str) -> optuna.storages.RDBStorage:
    """RDB storage with a heartbeat (a killed worker's trial is failed after GRACE_S).

    SQLite: every transaction is ``BEGIN IMMEDIATE``. Optuna claims an enqueued (WAITING) trial
    with a ``SELECT ... FOR UPDATE`` then ``UPDATE`` in one transaction; SQLite ignores
    ``FOR UPDATE`` and Python's sqlite3 only opens the transaction at the ``UPDATE``, so two
    workers could both read WAITING and both run the same trial (optuna/optuna#4002). Taking the
    write lock when the transaction begins serialises the claim (SQLAlchemy's pysqlite recipe).
    """
    sqlite = url.startswith("sqlite")
    engine = {"connect_args": {"timeout": 60, "isolation_level": None}} if sqlite else {}
    try:
        with experimental_features():
            storage = optuna.storages.RDBStorage(url, engine_kwargs=engine, heartbeat_interval=HEARTBEAT_S,
                                                 grace_period=GRACE_S)
    except (ImportError, sqlalchemy.exc.SQLAlchemyError) as err:
        raise ParamError(f"storage {masked(url)} cannot be opened ({type(err).__name__}: {err}); "
                         "fix tune.studies.<name>.storage or --storage") from None
    if sqlite:
        sqlalchemy.event.listen(storage.engine, "begin", begin_immediate)
    return storage


def begin_immediate(conn: sqlalchemy.engine.Connection) -> None:
    """Open every SQLite transaction with the write lock (pysqlite's own BEGIN is off)."""
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def fail_dead_trials(study: optuna.Study, storage: optuna.storages.RDBStorage) -> None:
    """Fail the RUNNING trials of dead processes: those without a heartbeat for GRACE_S (Optuna's
    stale trials), and those that never had a heartbeat and started more than GRACE_S ago.

    Optuna skips a RUNNING trial without a heartbeat row: a process killed between creating a
    trial and its heartbeat thread's first beat would leave it RUNNING for ever, holding a place
    in the budget (and keeping :func:`wait_for_running` waiting). Its start time is the creating
    machine's clock, compared with this one's: fine for clocks kept within GRACE_S of each other.
    """
    with experimental_features():
        optuna.storages.fail_stale_trials(study)
    running = {t._trial_id: t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    if not running:
        return
    with storage.engine.connect() as conn:
        column = HEARTBEATS_TABLE.c.trial_id
        beating = set(conn.execute(sqlalchemy.select(column).where(column.in_(list(running)))).scalars())
    for trial_id, t in running.items():
        started = t.datetime_start or datetime.now()
        if trial_id not in beating and datetime.now() - started > timedelta(seconds=GRACE_S):
            with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):  # it ended meanwhile
                storage.set_trial_state_values(trial_id, TrialState.FAIL)


def claim_study_attr(storage: optuna.storages.RDBStorage, study_id: int, key: str, value: Any,
                     replacing: Any | None) -> Any:
    """Compare-and-set of a study user attr: set ``key`` to ``value`` if it is still absent
    (``replacing`` None) or still ``replacing``; returns the value it holds afterwards (``value``
    if this call won, else the winner's).

    ``Study.set_user_attr`` overwrites (the last writer wins). Here the storage decides: the
    table's unique (study_id, key) lets exactly one INSERT succeed, and an UPDATE conditional on
    the old value changes the row for exactly one writer, on SQLite and PostgreSQL alike (between
    machines too). Optuna stores a user attr as its JSON text in ``study_user_attributes``.
    """
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
