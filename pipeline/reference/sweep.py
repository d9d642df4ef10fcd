"""Run the reference sweep: every label of a reference experiment for every seed, each seed on
its own split (``reference.split: per_seed``), and keep each run's metrics in
``reference/metrics/<experiment>/<label>-s<seed>.json``.

Rerunning the same command continues a stopped sweep: a run whose metrics file holds the same
configuration is skipped, an interrupted training resumes from its ``last.pt`` (same
fingerprint), and a metrics file is written only once its run is evaluated (atomically). A
changed hyperparameter reruns just the runs it touches.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipeline.layout import PRETRAIN, Tree, reference_plots_dir
from pipeline.params.experiment import ExperimentConfig
from pipeline.params.file import Params
from pipeline.params.reference import Variant, variant_experiment
from pipeline.params.schema import to_dict
from pipeline.reference.plan import RECORD_FORMAT, Job, plan, write_record

__all__ = ["RECORD_FORMAT", "Job", "ensure_prepared", "machine", "plan", "run", "run_job"]

def run(params: Params, jobs: list[Job], *, device: str = "auto", track: bool = True) -> None:
    """Run the jobs that are not done, seed by seed: the split (once), the CE pretraining (once,
    when a deferred job needs it), then each job's training and evaluation. A job the device
    cannot train as configured (bf16 where it is emulated) stops the sweep before anything is
    prepared or trained."""
    from pipeline.engine.build import check_precision, resolve_device

    for job in jobs:
        if not job.done():
            check_precision(job.exp, resolve_device(device))
    for (name, seed), group in _by_seed(jobs):
        todo = [j for j in group if not j.done()]
        print(f"[reference {name} seed {seed}] {len(group) - len(todo)} of {len(group)} runs done", file=sys.stderr)
        if not todo:
            continue
        base = variant_experiment(params.experiment(name), Variant("ce"), f"reference.experiments.{name}",
                                  data_seed=todo[0].split_seed)
        tree = todo[0].tree
        ensure_prepared(base, tree)
        # Deferred runs start from the pretraining's last.pt, also with pretrain_epochs 0 (as in the
        # DVC pipeline's pretrain stage: then it is the seed's random initialisation, shared). A
        # variant that changes what the pretraining depends on gets its own (Job.pretrain_label).
        pretrainings = {label: base if label == PRETRAIN else j.exp
                        for j in todo if j.exp.protocol == "deferred" for label in [j.pretrain_label(base)]}
        if pretrainings:
            from pipeline.engine.runs import pretrain

            for label, exp in pretrainings.items():
                pretrain(exp, seed, device=device, track=track, tree=tree, tags=_tags(seed, todo[0].split_seed),
                         label=label)
        for job in todo:
            run_job(job, device=device, track=track, pretrain_label=job.pretrain_label(base))


def run_job(job: Job, *, device: str, track: bool, pretrain_label: str = PRETRAIN) -> dict[str, Any]:
    """Train (or resume) and evaluate one job (a deferred one from the pretraining in the run
    folder ``pretrain_label``), then write its metrics file."""
    from pipeline.data.prepared import load_prepared
    from pipeline.engine.runs import train
    from pipeline.evaluation.evaluate import evaluate_run

    t0 = time.perf_counter()
    tags = _tags(job.seed, job.split_seed)
    train(job.exp, job.method, job.seed, device=device, track=track, tree=job.tree, label=job.label, tags=tags,
          pretrain_label=pretrain_label)
    data = load_prepared(job.tree.data)
    run_dir = job.tree.run_dir(job.seed, job.label)
    plots = reference_plots_dir(job.exp.name, job.label, job.seed)
    result = evaluate_run(job.exp, data, run_dir, plots, device)
    record = {"format": RECORD_FORMAT, "config": job.config, "experiment": job.exp.name, "label": job.label,
              "changed": job.changed, "split_seed": job.split_seed, **result, "machine": machine()}
    write_record(record, job.metrics_file)
    if track:
        from pipeline import tracking

        tracking.log_evaluation(result, plots, job.exp.mlflow_experiment, f"{job.exp.name}-{job.label}-s{job.seed}",
                                card=data.card, data_dir=job.tree.data)
    h = result["selected"]["headline"]
    print(f"[reference {job.exp.name} {job.label} s{job.seed}] selected: "
          + ", ".join(f"{k} {v:.4f}" for k, v in h.items() if v is not None)
          + f" ({time.perf_counter() - t0:.0f}s) -> {job.metrics_file}", file=sys.stderr)
    return record


def ensure_prepared(exp: ExperimentConfig, tree: Tree) -> None:
    """The seed's split in ``tree.data``, built unless a split of the same data config is there."""
    from pipeline.data.build import prepare_dataset
    from pipeline.data.prepared import save_prepared

    card = tree.data / "card.json"
    want = json.loads(json.dumps(to_dict(exp.data)))
    if card.is_file() and json.loads(card.read_text()).get("config") == want:
        return
    data = prepare_dataset(exp.data)
    save_prepared(data, tree.data)
    print(f"prepared {tree.data}: " + ", ".join(f"{k} {len(s)}" for k, s in data.splits.items()), file=sys.stderr)


def _by_seed(jobs: list[Job]) -> Iterator[tuple[tuple[str, int], list[Job]]]:
    groups: dict[tuple[str, int], list[Job]] = {}
    for job in jobs:
        groups.setdefault((job.exp.name, job.seed), []).append(job)
    yield from groups.items()


def _tags(seed: int, split_seed: int) -> dict[str, str]:
    return {"reference": "true", "split_seed": str(split_seed), "seed": str(seed)}


def machine() -> dict[str, Any]:
    """The CPU the run trained on (times are comparable only on the same kind): its name, whether
    it has AVX-512 (the two 2-core kinds this project runs on differ there) and torch's threads."""
    import torch

    name, flags = platform.processor() or platform.machine(), ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = line
    except OSError:
        pass
    return {"cpu": name, "avx512": " avx512f" in flags, "threads": torch.get_num_threads()}

