"""Plateau check of a reference profile: CE over the experiment's schedule and over one twice as
long (every epoch count and milestone doubled), validation metrics at the end of each.

    python -m pipeline.stages.plateau --experiment lt_ref [--seed 0] [--threads 1]

The profile is at a plateau when the first is within 1 point of the second. Writes
``metrics/plateau/<experiment>-s<seed>.json`` (commit it; the README's profile table cites it);
runs go to ``models/plateau/`` (not committed), without MLflow, and resume when rerun.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from pipeline.params.experiment import ExperimentConfig
from pipeline.params.reference import Variant, variant_experiment


def doubled(exp: ExperimentConfig, factor: int, data_seed: int) -> ExperimentConfig:
    """``exp`` with its epochs, milestones and LDAM-DRW's re-weighting epoch times ``factor``."""
    values: dict[str, Any] = {"pretrain_epochs": exp.pretrain_epochs * factor, "train_epochs": exp.train_epochs * factor,
                              "optim.milestones": [m * factor for m in exp.optim.milestones]}
    if "ldam_drw" in exp.methods:
        values["methods.ldam_drw.drw_epoch"] = exp.methods["ldam_drw"].drw_epoch * factor
    return variant_experiment(exp, Variant("ce", values), f"plateau x{factor}", data_seed=data_seed)


def check(exp: ExperimentConfig, seed: int, data_seed: int, folder: Path) -> dict[str, Any]:
    """CE on ``exp`` and on its double (pretraining, then the method phase from it)."""
    from pipeline.data.build import prepare_dataset
    from pipeline.data.prepared import load_prepared, save_prepared
    from pipeline.engine.loop import RunSpec, fit
    from pipeline.layout import LAST

    if not (folder / "data" / "card.json").is_file():
        save_prepared(prepare_dataset(doubled(exp, 1, data_seed).data), folder / "data")
    data = load_prepared(folder / "data")
    out: dict[str, Any] = {"experiment": exp.name, "seed": seed, "split_seed": data_seed}
    for factor in (1, 2):
        e = doubled(exp, factor, data_seed)
        p, t = e.pretrain_epochs, e.train_epochs
        run = folder / f"x{factor}"
        t0 = time.perf_counter()
        init = None
        if p:
            fit(RunSpec(e, data, "ce", seed, run / "pretrain", first_epoch=0, last_epoch=p,
                        desc=f"plateau {exp.name} x{factor} pretrain"))
            init = run / "pretrain" / LAST
        summary = fit(RunSpec(e, data, "ce", seed, run / "ce", first_epoch=p, last_epoch=p + t, init=init,
                              desc=f"plateau {exp.name} x{factor} ce"))
        last = summary["history"][-1]
        out[f"x{factor}"] = {"epochs": [p, t], "milestones": e.optim.milestones,
                             **{k: v for k, v in last.items() if k.startswith("val_")},
                             "seconds": time.perf_counter() - t0}
    metric = exp.selection_metric
    out["metric"] = metric
    out["gap_points"] = 100 * (out["x2"][metric] - out["x1"][metric])
    out["gap_val_acc_points"] = 100 * (out["x2"]["val_acc"] - out["x1"]["val_acc"])
    out["at_plateau"] = abs(out["gap_val_acc_points"]) <= 1.0
    return out
