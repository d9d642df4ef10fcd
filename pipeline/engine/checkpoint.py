"""A run folder's checkpoints: one writer at a time, weights-only loading, atomic saving, and a
Ctrl-C that says what was saved.

``last.pt`` holds the resumable state after the last finished epoch (weights, optimizer,
method state, RNG, history, best so far, the run's fingerprint); ``best.pt`` the
validation-selected weights. Both carry ``format`` and ``fingerprint``, so a file of another
project, version or configuration is refused with one line instead of being trained on.

Neither holds what differs between two runs of the same configuration (the MLflow run id, the
epochs' wall-clock times: :data:`TIMING_KEYS`): that goes to the run record ``run.json`` beside
them, which DVC ignores, so the run folder DVC hashes is the same after a rerun.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from pipeline.errors import UserError
from pipeline.layout import LAST, RUN_RECORD, atomic_file, write_json

CHECKPOINT_FORMAT = 1


class CheckpointError(UserError, ValueError):
    """A checkpoint that cannot be used; the message says which file and what to do."""


class RunLockedError(CheckpointError):
    """Another process is training into the same run folder."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training; the message says what was saved and how to resume."""


@contextlib.contextmanager
def run_lock(out_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``out_dir`` (``flock`` on ``.<name>.lock`` beside it, outside the
    DVC output) while training writes it: a second trainer, e.g. from a ``dvc repro`` started while
    an orphaned trainer of a killed one still runs, stops with one line instead of writing the
    same checkpoints and MLflow run. The kernel releases the lock when the process dies."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    path = out_dir.parent / f".{out_dir.name}.lock"
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().strip() or "unknown"
            raise RunLockedError(f"run folder {out_dir} is being trained by another process (pid {owner}, lock "
                                 f"{path}): wait for it to finish or stop it, then rerun") from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def saved_on_interrupt(out_dir: Path) -> Iterator[None]:
    """A Ctrl-C inside becomes one :class:`TrainingInterrupted` naming the saved epoch (instead of
    a KeyboardInterrupt traceback from deep in autograd)."""
    try:
        yield
    except KeyboardInterrupt:
        saved = "nothing yet"
        if (out_dir / LAST).is_file():
            saved = f"epoch {load_checkpoint(out_dir / LAST)['epoch']} (finished epochs, in {out_dir / LAST})"
        raise TrainingInterrupted(f"interrupted: the run is saved at {saved}; rerun the same command "
                                  "(or dvc repro) to resume from there") from None


def load_checkpoint(path: Path) -> dict[str, Any]:
    """``torch.load(weights_only=True)`` with one clear error for a missing or broken file."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found: run the stage that writes it first")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, pickle error, foreign object...
        raise CheckpointError(f"checkpoint {path} is unreadable ({type(err).__name__}: corrupt, truncated, or "
                              "not a weights-only checkpoint); delete it and rerun the stage that writes it") from err
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT or "model" not in ckpt:
        raise CheckpointError(f"checkpoint {path} is not a checkpoint of this project (format "
                              f"{CHECKPOINT_FORMAT}); delete it and rerun the stage that writes it")
    return ckpt


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` through :func:`pipeline.layout.atomic_file` (never half-written); a failed
    write (full disk, read-only folder: torch reports "unexpected pos" or a writer error without
    the path) raises one :class:`CheckpointError`."""
    try:
        with atomic_file(path) as tmp:
            torch.save(obj, tmp)
    except (OSError, RuntimeError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise CheckpointError(f"cannot write {path} ({type(err).__name__}: {first}): free disk space or make "
                              "the folder writable, then rerun (training resumes from its last saved epoch)") from err


TIMING_KEYS = ("epoch_seconds", "train_img_per_s")  # the per-epoch metrics that differ between two runs


def without_timings(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``history`` (one dict per epoch) without :data:`TIMING_KEYS`: what the hashed files keep."""
    return [{k: v for k, v in epoch.items() if k not in TIMING_KEYS} for epoch in history]


def write_run_record(out_dir: Path, fingerprint: str, run_id: str | None, history: list[dict[str, Any]]) -> None:
    """The run record ``run.json``: the run's MLflow id and each epoch's :data:`TIMING_KEYS`."""
    epochs = [{"epoch": e["epoch"], **{k: e[k] for k in TIMING_KEYS if k in e}} for e in history]
    write_json({"fingerprint": fingerprint, "run_id": run_id, "epochs": epochs}, out_dir / RUN_RECORD)


def read_run_record(out_dir: Path, fingerprint: str) -> dict[str, Any]:
    """The run record of the run ``fingerprint`` in ``out_dir``; ``{}`` where there is none (a
    folder checked out by DVC, which does not keep it), it is unreadable or of another run: the
    record only adds the run id and the epoch times, nothing a result depends on."""
    try:
        record = json.loads((out_dir / RUN_RECORD).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(record, dict) or record.get("fingerprint") != fingerprint:
        return {}
    return record


def with_timings(history: list[dict[str, Any]], record: dict[str, Any]) -> list[dict[str, Any]]:
    """``history`` with the epoch times of the run ``record`` added, epoch by epoch."""
    by_epoch = {e.get("epoch"): e for e in record.get("epochs", []) if isinstance(e, dict)}
    return [{**epoch, **{k: v for k, v in by_epoch.get(epoch.get("epoch"), {}).items() if k in TIMING_KEYS}}
            for epoch in history]
