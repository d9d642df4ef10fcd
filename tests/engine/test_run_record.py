"""What differs between two runs of one configuration (the MLflow run id, the epochs' wall-clock
times) stays out of the files DVC hashes and lives in the run record ``run.json``, which DVC
ignores: a rerun of the same configuration writes the same run folder, so ``dvc.lock`` stays as
it was, while the id and the times are still there for resuming, MLflow and the cost records."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipeline.engine.checkpoint import TIMING_KEYS, load_checkpoint
from pipeline.engine.loop import RunSpec, fit
from pipeline.evaluation.evaluate import load_finished_run
from pipeline.layout import HISTORY, LAST, RUN_RECORD
from tests.tiny import tiny_data, tiny_experiment

ROOT = Path(__file__).resolve().parents[2]


class FakeTracker:
    """A tracker that hands out a given run id (an MLflow run of its own per training)."""

    def __init__(self, run_id: str) -> None:
        self.run_id, self.started_with = run_id, []

    def start(self, run_id, *, fingerprint, params):
        self.started_with.append(run_id)
        return run_id or self.run_id

    def log_epoch(self, epoch, metrics):
        pass

    def finish(self, out_dir, method, summary):
        pass


class Interrupt(Exception):
    pass


def hashed_files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file() and p.name != RUN_RECORD}


@pytest.mark.parametrize("method", ["ce", "meta_iada"])
def test_two_runs_of_one_configuration_write_the_same_hashed_files(tmp_path, method):
    exp, data = tiny_experiment(), tiny_data()
    summaries = {}
    for name in ("a", "b"):
        summaries[name] = fit(RunSpec(exp, data, method, 0, tmp_path / name, first_epoch=0, last_epoch=2,
                                      device="cpu"), tracker=FakeTracker(name * 32))
    a, b = hashed_files(tmp_path / "a"), hashed_files(tmp_path / "b")
    assert set(a) >= {LAST, HISTORY, "best.pt", "sample_scores.npz"}
    assert a == b  # byte for byte, though the run ids and the epoch times differ
    for name in ("a", "b"):
        record = json.loads((tmp_path / name / RUN_RECORD).read_text())
        summary = summaries[name]
        assert record["run_id"] == summary["run_id"] == name * 32
        assert [e["epoch"] for e in record["epochs"]] == [0, 1]
        assert all(e["epoch_seconds"] > 0 and e["train_img_per_s"] > 0 for e in record["epochs"])
        assert all(set(TIMING_KEYS) <= set(e) for e in summary["history"])  # the caller gets the times
    history = json.loads((tmp_path / "a" / HISTORY).read_text())
    assert "run_id" not in history and not any(set(TIMING_KEYS) & set(e) for e in history["history"])
    assert not any(set(TIMING_KEYS) & set(e) for e in load_checkpoint(tmp_path / "a" / LAST)["history"])


def stopped_after_one_epoch(run: Path, last_epoch: int, tracker: FakeTracker | None = None) -> RunSpec:
    """A tiny ce run into ``run`` of ``last_epoch`` epochs, stopped after its first; returns its spec."""
    spec = RunSpec(tiny_experiment(), tiny_data(), "ce", 0, run, first_epoch=0, last_epoch=last_epoch, device="cpu")

    def stop_after_first(epoch, metrics):
        if epoch == 0:
            raise Interrupt

    with pytest.raises(Interrupt):
        fit(spec, tracker=tracker, on_epoch=stop_after_first)
    return spec


def test_evaluation_and_a_resumed_run_read_the_run_id_and_times_from_the_record(tmp_path):
    run = tmp_path / "run"
    spec = stopped_after_one_epoch(run, 3, FakeTracker("r" * 32))
    first = json.loads((run / RUN_RECORD).read_text())["epochs"][0]["epoch_seconds"]
    resumed = FakeTracker("s" * 32)
    summary = fit(spec, tracker=resumed)
    assert resumed.started_with == ["r" * 32]  # the same MLflow run goes on
    assert summary["history"][0]["epoch_seconds"] == first  # the first epoch's time survived the stop
    history, _, _ = load_finished_run(run)
    assert history["run_id"] == "r" * 32
    assert [e["epoch_seconds"] for e in history["history"]] == [e["epoch_seconds"] for e in summary["history"]]
    (run / RUN_RECORD).unlink()  # a folder DVC checked out has no record: the result is the same, without them
    history, _, _ = load_finished_run(run)
    assert history["run_id"] is None and not any("epoch_seconds" in e for e in history["history"])


def test_a_checkpoint_of_before_the_run_record_resumes_its_run_id(tmp_path):
    """``last.pt`` files written before the run record existed carried the run id and the times."""
    run = tmp_path / "run"
    spec = stopped_after_one_epoch(run, 2)
    old = load_checkpoint(run / LAST)
    old["run_id"] = "o" * 32
    old["history"][0]["epoch_seconds"] = 1.25
    torch.save(old, run / LAST)
    (run / RUN_RECORD).unlink()
    tracker = FakeTracker("n" * 32)
    summary = fit(spec, tracker=tracker)
    assert tracker.started_with == ["o" * 32] and summary["history"][0]["epoch_seconds"] == 1.25


def test_dvc_leaves_the_run_record_out_of_a_run_folders_hash():
    """``.dvcignore`` names the record under every run folder, and nothing else there."""
    def ignored(path):
        return subprocess.run([sys.executable, "-m", "dvc", "check-ignore", path], cwd=ROOT,
                              capture_output=True, text=True).returncode == 0

    assert ignored(f"models/lt/s0/meta_iada/{RUN_RECORD}")
    assert ignored(f"models/reference/lt_ref/s1/pretrain/{RUN_RECORD}")
    assert not ignored(f"models/lt/s0/meta_iada/{HISTORY}")
    assert not ignored(f"models/lt/s0/meta_iada/{LAST}")
