"""What the reference sweep runs: its jobs (a label of an experiment, for one seed) in order, and
the configuration hash that tells a finished run's metrics file from an outdated one. Kept apart
from the training (:mod:`pipeline.reference.sweep`) so that the report can check the committed
metrics against ``params.yaml`` without importing the training code."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import UserError
from pipeline.layout import PRETRAIN, Tree, json_safe, reference_metrics_file, reference_tree, write_json
from pipeline.params.experiment import ExperimentConfig, config_hash
from pipeline.params.file import Params
from pipeline.params.reference import variant_experiment
from pipeline.params.schema import ParamError

RECORD_FORMAT = 1


def record_digest(record: dict[str, Any]) -> str:
    """sha256 of a metrics record's content without its ``digest`` (keys sorted, as JSON reads it
    back): what the sweep wrote, so that a later edit of any number shows."""
    body = json.loads(json.dumps(json_safe({k: v for k, v in record.items() if k != "digest"}), default=float))
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def write_record(record: dict[str, Any], path: Path) -> None:
    """Write a run's metrics record with its digest (atomically)."""
    write_json({**record, "digest": record_digest(record)}, path)


def read_record(path: Path) -> dict[str, Any]:
    """A committed metrics record, checked: a file that is not JSON (truncated) or whose content
    no longer matches its digest (a number edited by hand) is one :class:`UserError` saying how to
    get it back, never a traceback, a silent "todo" or a number in the report."""
    restore = f"restore it with `git checkout -- {path}`, or delete it and rerun its run"
    try:
        record = json.loads(path.read_text())
    except ValueError as err:
        raise UserError(f"{path} is damaged (not valid JSON: {err}): {restore}") from None
    if not isinstance(record, dict) or record.get("digest") != record_digest(record):
        raise UserError(f"{path} does not match the digest its run wrote (edited since?): {restore}")
    return record


def pretraining_hash(exp: ExperimentConfig, seed: int) -> str:
    """The hash of what the CE pretraining of a deferred run depends on: its data, network
    (precision included), optimizer, augmentation, meta batch and length, and the seed."""
    return config_hash(exp.data, exp.network, exp.optim, exp.augment, exp.meta_batch_size, exp.pretrain_epochs, seed)


@dataclass
class Job:
    """One run of the sweep: a label of an experiment, for one seed."""

    exp: ExperimentConfig  # the variant's experiment on the seed's split
    label: str
    method: str
    seed: int
    split_seed: int
    changed: dict[str, Any]  # the variant's keys

    @property
    def tree(self) -> Tree:
        return reference_tree(self.exp.name, self.split_seed)

    @property
    def metrics_file(self) -> Path:
        return reference_metrics_file(self.exp.name, self.label, self.seed)

    @property
    def config(self) -> str:
        """What the run's result depends on (not e.g. the other methods' hyperparameters or the
        eval batch size): a changed value here makes the sweep rerun the run."""
        e = self.exp
        return config_hash(e.data, e.network, e.optim, e.augment, e.pretrain_epochs, e.train_epochs,
                           e.meta_batch_size, e.protocol, self.method, e.method_config(self.method), self.seed)

    def pretrain_label(self, base: ExperimentConfig) -> str:
        """The run folder of the pretraining this deferred run starts from: ``pretrain``, shared by
        every label of the seed whose pretraining is the base experiment's, or ``pretrain-<hash>``
        for a variant that changes it (e.g. ``network.precision``), so that the variant never
        starts from a pretraining of another configuration."""
        mine = pretraining_hash(self.exp, self.seed)
        return PRETRAIN if mine == pretraining_hash(base, self.seed) else f"{PRETRAIN}-{mine[:8]}"

    def done(self) -> bool:
        f = self.metrics_file
        if not f.is_file():
            return False
        record = read_record(f)  # a damaged file stops the sweep: it is never overwritten unannounced
        return record.get("config") == self.config and record.get("format") == RECORD_FORMAT


def plan(params: Params, experiments: list[str] | None = None, seeds: list[int] | None = None,
         labels: list[str] | None = None) -> list[Job]:
    """The sweep's runs in order: per experiment, seed by seed (so that a stopped sweep leaves
    whole seeds), each seed's labels in params order. Names outside ``params.reference`` are
    errors."""
    ref = params.reference
    names = experiments or list(ref.experiments)
    for name in names:
        if name not in ref.experiments:
            raise ParamError(f"--experiment {name!r} has no reference.experiments block: use one of "
                             f"{', '.join(ref.experiments) or '(none declared)'}")
    jobs = []
    for name in names:
        base, sweep = params.experiment(name), ref.experiments[name]
        all_labels = sweep.labels()
        for label in labels or []:
            if label not in all_labels:
                raise ParamError(f"--label {label!r} is not a run of reference.experiments.{name}: use one of "
                                 f"{', '.join(all_labels)}")
        for seed in seeds if seeds is not None else ref.seeds:
            split = ref.split_seed(base, seed)
            for label, variant in all_labels.items():
                if (labels and label not in labels) or seed not in ref.seeds_of(variant):
                    continue
                exp = variant_experiment(base, variant, f"reference.experiments.{name}.variants.{label}",
                                         data_seed=split)
                jobs.append(Job(exp, label, variant.method, seed, split, dict(variant.set)))
    return jobs


def machine_kind(machine: dict[str, Any] | None) -> str:
    """The CPU kind a record was trained on, as the reports name it: the model and whether it has
    AVX-512. Kinds round convolutions differently, so the same run differs between them
    (docs/results-cpu-profiles.md); the thread count is kept apart, it names no kind."""
    m = machine or {}
    return f"{m.get('cpu') or 'an unrecorded CPU'} {'with' if m.get('avx512') else 'without'} AVX-512"
