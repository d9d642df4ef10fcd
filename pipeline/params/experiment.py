"""An experiment of ``params.yaml``: data, network, schedule, every method's hyperparameters
and the search space of its studies, each parsed into its typed config.

An unknown key, a value out of range, an unknown method or an untunable search key stops with
one :class:`~pipeline.params.schema.ParamError` naming the key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pipeline.data.config import DataConfig
from pipeline.data.scenarios import SCENARIOS
from pipeline.methods import REGISTRY, method_class
from pipeline.networks import Arch, Precision
from pipeline.params.schema import ParamError, bounded, build, flatten, to_dict
from pipeline.params.search import ParamSpace

# Shared by every trial of an experiment (prepared data, pretrain checkpoint): not tunable.
SEARCH_BLOCK = "tune.search"  # an experiment's search space: tune.search.<experiment> (params/tune.yaml)
UNTUNABLE = ("data", "network", "pretrain_epochs", "protocol", "search")


@dataclass
class NetworkConfig:
    arch: Arch = "resnet32"
    channels_last: bool = True  # NHWC: faster CE and meta steps on CPU (docs/benchmarks.md)
    # bf16: the backbone's forward under bfloat16 autocast, weights, losses and Ω in float32
    # (pipeline/networks.py; parity and speed in docs/precision.md). Added after the committed runs,
    # which are fp32: at its default it leaves their configuration hashes unchanged.
    precision: Precision = bounded("fp32", added=True)


@dataclass
class OptimConfig:
    """SGD with a step schedule and a linear warm-up (method.md §6); epochs are global.

    Schedule of the peers' CIFAR-LT code (LDAM-DRW, MetaSAug): lr ramps linearly over the first
    ``warmup_epochs`` epochs, then is multiplied by ``gamma`` at each milestone; the spec's
    ``gamma`` = 0.01 at epochs 160 and 180 gives 0.1 -> 1e-3 -> 1e-5.
    """

    lr: float = bounded(0.1, gt=0)
    momentum: float = bounded(0.9, ge=0, lt=1)
    nesterov: bool = True
    weight_decay: float = bounded(5e-4, ge=0)
    batch_size: int = bounded(100, ge=1)
    warmup_epochs: int = bounded(5, ge=0)
    milestones: list[int] = bounded([160, 180])
    gamma: float = bounded(0.01, gt=0, le=1)

    def lr_at(self, epoch: int, step: int = 0, steps_per_epoch: int = 1) -> float:
        """lr of iteration ``step`` (of ``steps_per_epoch``) of global epoch ``epoch``.

        Warm-up: at position p = epoch + (step + 1)/steps_per_epoch ≤ w (w = ``warmup_epochs``),
        lr·p/w, so the ramp spans all w epochs and reaches lr at the end of epoch w − 1 (per
        iteration; with steps_per_epoch = 1 it is LDAM-DRW's per-epoch lr·(epoch + 1)/w). After
        it, lr·gamma^(number of milestones ≤ epoch).
        """
        position = epoch + (step + 1) / steps_per_epoch
        if position < self.warmup_epochs:
            return self.lr * position / self.warmup_epochs
        return self.lr * self.gamma ** sum(epoch >= m for m in self.milestones)


@dataclass
class AugmentConfig:
    crop_padding: int = bounded(4, ge=0)  # random crop after zero padding (0: no crop)
    flip: bool = True  # random horizontal flip


@dataclass
class ExperimentConfig:
    data: DataConfig
    network: NetworkConfig = field(default_factory=NetworkConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    pretrain_epochs: int = bounded(160, ge=0)  # cross-entropy epochs before the method
    train_epochs: int = bounded(40, ge=1)  # epochs of the compared method
    meta_batch_size: int = bounded(100, ge=1)
    eval_batch_size: int = bounded(500, ge=1)
    # deferred: every method trains train_epochs from the CE pretraining's checkpoint (the
    # MetaSAug / Meta-IADA protocol); scratch: every method trains all pretrain_epochs +
    # train_epochs from a seeded random initialisation (LDAM-DRW's, LA's, the CB papers' own).
    protocol: Literal["deferred", "scratch"] = "deferred"
    # Record the test accuracy of every epoch from the first lr milestone on, as
    # ``calibration_test_acc``: the published long-tail numbers report the best epoch on test, and
    # the paper-scale calibration (issue 31) compares with them that way. Never used to select or
    # to tune anything; off by default (an evaluation of the test split per epoch costs time).
    calibration_test_curve: bool = bounded(False, added=True)
    # Method name -> its Config (read as a mapping of overrides of the code defaults).
    methods: dict[str, Any] = field(default_factory=dict)
    # Dotted key -> ParamSpace: the Optuna search space (read as mappings).
    search: dict[str, Any] = field(default_factory=dict)
    name: str = field(default="", init=False)  # its key under experiments: (set by the params file)

    def validate(self, where: str) -> None:
        """Parse the method blocks and the search space; errors name the full key under
        ``where`` (``experiments.<name>``)."""
        self.methods = {name: build(method_class(name, f"{where}.methods.{name}").Config, raw,
                                    f"{where}.methods.{name}")
                        for name, raw in self.methods.items()}
        space = {}
        for key, raw in self.search.items():
            entry = f"{SEARCH_BLOCK}.{where.removeprefix('experiments.')}.{key}"  # where params/tune.yaml writes it
            check_tunable(self, key, entry)
            space[key] = build(ParamSpace, raw, entry)
            check_values(self, key, space[key], entry)
        self.search = space

    def check_schedule(self, where: str) -> None:
        """The lr schedule fits the experiment's epochs: a milestone that never applies or a
        warm-up longer than training is a mistake in params.yaml (not checked in :meth:`validate`:
        an Optuna trial may legitimately shorten ``train_epochs``)."""
        o, total = self.optim, self.total_epochs
        if any(b <= a for a, b in zip(o.milestones, o.milestones[1:])):
            raise ParamError(f"{where}.optim.milestones = {o.milestones} must be strictly increasing")
        late = [m for m in o.milestones if not 0 < m < total]
        if late:
            raise ParamError(f"{where}.optim.milestones = {o.milestones}: {late[0]} is outside the schedule "
                             f"(epochs 0-{total - 1}, pretrain_epochs + train_epochs), so it would never apply")
        if o.warmup_epochs > total:
            raise ParamError(f"{where}.optim.warmup_epochs = {o.warmup_epochs} is longer than the schedule "
                             f"({total} epochs): the lr would never reach optim.lr")

    @property
    def scenario(self) -> str:
        return self.data.scenario

    @property
    def total_epochs(self) -> int:
        return self.pretrain_epochs + self.train_epochs

    @property
    def selection_metric(self) -> str:
        return SCENARIOS[self.scenario].selection_metric

    @property
    def mlflow_experiment(self) -> str:
        return SCENARIOS[self.scenario].mlflow_experiment

    def method_config(self, name: str) -> Any:
        """The method's Config as it runs: its block of params.yaml (the code defaults without one)
        with the values that follow from this experiment's schedule filled in by the Config's
        ``for_schedule(milestones)``, where it has one (LDAM-DRW's ``drw_epoch``: the first lr
        milestone unless set). The one place where they are resolved: the trainer, run
        fingerprints, MLflow params, studies and the reference sweep's configuration hashes all
        read a method's config here; ``methods`` keeps the blocks as written (None: derived), so
        that an experiment rebuilt with other milestones (a variant, a trial) derives them anew."""
        if name in self.methods:
            cfg = self.methods[name]
        else:
            cfg = build(method_class(name, "--method").Config, {}, f"methods.{name}")
        for_schedule = getattr(cfg, "for_schedule", None)
        return for_schedule(self.optim.milestones) if callable(for_schedule) else cfg


def run_params(exp: ExperimentConfig, method_cfg: Any) -> dict[str, Any]:
    """The flat params a run logs: its experiment's settings without the other methods' blocks,
    the search space and the data sections of other scenarios, plus its own method's
    hyperparameters as ``method.<key>``."""
    settings = {k: v for k, v in to_dict(exp).items() if k not in ("methods", "search")}
    others = set(SCENARIOS) - {exp.scenario}  # each scenario's data section is named after it
    settings["data"] = {k: v for k, v in settings["data"].items() if k not in others}
    return {**flatten(settings), **{f"method.{k}": v for k, v in flatten(to_dict(method_cfg)).items()}}


def tunable_keys(exp: ExperimentConfig) -> set[str]:
    """Dotted keys a trial may set: leaves of the experiment config and every method's fields."""
    flat = flatten({k: v for k, v in to_dict(exp).items() if k not in ("methods", *UNTUNABLE)})
    return set(flat) | {f"methods.{name}.{f.name}" for name, m in REGISTRY.items()
                        for f in dataclasses.fields(m.Config)}


def check_tunable(exp: ExperimentConfig, key: str, where: str) -> None:
    head = key.split(".")[0]
    if head in UNTUNABLE:
        raise ParamError(f"{where}: {key!r} cannot be tuned: every trial shares the experiment's "
                         f"prepared data and pretrain checkpoint ({', '.join(UNTUNABLE)} are fixed)")
    if key not in tunable_keys(exp):
        raise ParamError(f"{where}: {key!r} is not a key of the experiment config (use a dotted path "
                         "such as optim.lr or methods.meta_iada.alpha)")


def check_values(exp: ExperimentConfig, key: str, spec: ParamSpace, where: str) -> None:
    """Every choice, or both ends of a range, must be a valid value of ``key`` (checked by
    building the experiment with it), so that a bad bound fails here, not at trial time."""
    raw = to_dict(exp)
    for value in spec.ends():
        try:
            apply_values(raw, {key: value}, "experiments.<trial>")
        except ParamError as err:
            raise ParamError(f"{where}: the value {value!r} is not allowed for {key} ({err})") from None


def apply_values(raw_exp: Mapping[str, Any], values: Mapping[str, Any], where: str) -> ExperimentConfig:
    """The experiment with dotted ``values`` merged in, validated like params.yaml (without its
    search space: a trial searches nothing)."""
    raw = json.loads(json.dumps(raw_exp))  # a deep copy
    raw.pop("search", None)
    for key, value in values.items():
        node = raw
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return build(ExperimentConfig, raw, where)


def config_hash(*parts: Any) -> str:
    """Stable hash of configs (dataclasses or plain data), for resume checks; ``added`` fields at
    their default do not enter it (see :func:`~pipeline.params.schema.bounded`)."""
    blob = json.dumps([to_dict(p, hashing=True) for p in parts], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
