"""Shared body of the ``pretrain`` and ``train`` stages."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.data.prepared import load_prepared
from pipeline.params.experiment import ExperimentConfig, Params
from pipeline.stages.common import data_dir, run_name
from pipeline.engine.loop import fit


def train_stage(params: Params, exp: ExperimentConfig, experiment: str, method: str, seed: int, out: Path, *,
                first_epoch: int, last_epoch: int, init: Path | None, stage: str, track: bool) -> dict[str, Any]:
    data = load_prepared(data_dir(experiment))
    label = "pretrain" if stage == "pretrain" else method
    tracker = None
    if track:
        from pipeline.tracking import RunTracker, registered_model_name

        tracker = RunTracker(exp.mlflow_experiment, run_name(experiment, label, seed), card=data.card,
                             tags={"stage": stage, "experiment": experiment, "method": label, "seed": str(seed)},
                             register_as=registered_model_name(experiment))
    try:
        return fit(exp, data, method, seed, out, first_epoch=first_epoch, last_epoch=last_epoch, init=init,
                   device=params.run.device, tracker=tracker,
                   desc=run_name(experiment, label, seed))
    finally:
        if tracker is not None:
            tracker.close("FAILED")
