"""Plateau check of a reference profile: CE over the experiment's schedule and over one twice as
long (every epoch count and milestone doubled), validation metrics at the end of each.

    python -m pipeline.stages.plateau --experiment lt_ref [--seed 0] [--threads 1] [--doublings 1]

The profile is at a plateau when the first is within 1 point of the second. With ``--doublings
n`` the check climbs a ladder: schedules x1, x2, ..., x2^n, each pair (x f, x 2f) compared the same
way, stopping at the first pair within 1 point; ``plateau_factor`` is that pair's f (the shortest
multiple of the schedule that is at a plateau), or None when no measured pair is. Writes
``metrics/plateau/<experiment>-s<seed>.json`` (commit it; the profile table of docs/profiles.md cites it);
runs go to ``models/plateau/`` (not committed), without MLflow, and resume when rerun.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from pipeline.params.experiment import ExperimentConfig
from pipeline.params.reference import Variant, variant_experiment


def doubled(exp: ExperimentConfig, factor: int, data_seed: int) -> ExperimentConfig:
    """``exp`` with its epochs, milestones and LDAM-DRW's re-weighting epoch times ``factor`` (its
    resolved value: the first milestone times ``factor`` when derived, as set times ``factor``
    when set)."""
    values: dict[str, Any] = {"pretrain_epochs": exp.pretrain_epochs * factor,
                              "train_epochs": exp.train_epochs * factor,
                              "optim.milestones": [m * factor for m in exp.optim.milestones]}
    if "ldam_drw" in exp.methods:
        values["methods.ldam_drw.drw_epoch"] = exp.method_config("ldam_drw").drw_epoch * factor
    return variant_experiment(exp, Variant("ce", values), f"plateau x{factor}", data_seed=data_seed)


def check(exp: ExperimentConfig, seed: int, data_seed: int, folder: Path, doublings: int = 1) -> dict[str, Any]:
    """CE on ``exp`` and on its doubles up to ``2**doublings`` times it (pretraining, then the method
    phase from it), stopping at the first schedule within 1 point of its double."""
    if doublings < 1:
        raise ValueError(f"doublings must be at least 1, got {doublings}")
    from pipeline.data.build import prepare_dataset
    from pipeline.data.prepared import load_prepared, save_prepared
    from pipeline.engine.loop import RunSpec, fit
    from pipeline.layout import LAST

    if not (folder / "data" / "card.json").is_file():
        save_prepared(prepare_dataset(doubled(exp, 1, data_seed).data), folder / "data")
    data = load_prepared(folder / "data")
    out: dict[str, Any] = {"experiment": exp.name, "seed": seed, "split_seed": data_seed}
    metric = exp.selection_metric
    pairs: list[dict[str, Any]] = []
    for step in range(doublings + 1):
        factor = 2**step
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
        if step:
            short, long = out[f"x{factor // 2}"], out[f"x{factor}"]
            gap = 100 * (long["val_acc"] - short["val_acc"])
            pairs.append({"factors": [factor // 2, factor], "gap_points": 100 * (long[metric] - short[metric]),
                          "gap_val_acc_points": gap, "at_plateau": abs(gap) <= 1.0})
            if pairs[-1]["at_plateau"]:
                break
    out["metric"] = metric
    # the profile itself (x1 against x2), as the single check writes it
    out["gap_points"] = pairs[0]["gap_points"]
    out["gap_val_acc_points"] = pairs[0]["gap_val_acc_points"]
    out["at_plateau"] = pairs[0]["at_plateau"]
    out["pairs"] = pairs
    out["plateau_factor"] = next((p["factors"][0] for p in pairs if p["at_plateau"]), None)
    return out
