"""``params.yaml``: schema, validation, and the experiments it declares.

Layout::

    run:          # what `dvc repro` runs: the matrix experiment x method x seed
      experiments: [lt]
      methods: [ce, meta_iada]
      seeds: [0]
    experiments:  # named experiments (scenario + data + network + schedule + method params)
      lt: {data: {...}, network: {...}, optim: {...}, pretrain_epochs: .., train_epochs: ..,
           methods: {meta_iada: {alpha: 0.5, ...}}, search: {...}}
    tune: {...}   # Optuna studies (pipeline.tuning.study)

Everything is validated before any work: an unknown key, a value out of range or an unknown
method/experiment stops with one :class:`~pipeline.params.schema.ParamError` naming the key.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from pipeline.params.schema import ParamError, bounded, build, to_dict
from pipeline.data.config import DataConfig
from pipeline.methods import REGISTRY
from pipeline.networks import Arch

PARAMS_FILE = "params.yaml"
TOP_LEVEL_KEYS = ("run", "experiments", "tune")

# The validation metric each scenario selects checkpoints (and tunes) on.
SELECTION_METRIC = {"longtail": "val_acc", "noisy": "val_acc", "glt": "val_acc",
                    "subpop": "val_worst_group_acc"}
# The MLflow experiment of each scenario.
MLFLOW_EXPERIMENT = {"longtail": "long-tail", "noisy": "noisy-labels", "subpop": "subpopulation-shift",
                     "glt": "generalized-long-tail"}


@dataclass
class NetworkConfig:
    arch: Arch = "resnet32"
    channels_last: bool = True  # NHWC: about 15% faster CE and meta steps on CPU (pipeline.bench)


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
    methods: dict[str, dict[str, Any]] = field(default_factory=dict)  # per-method overrides
    search: dict[str, dict[str, Any]] = field(default_factory=dict)  # Optuna search space

    def validate(self, where: str) -> None:
        """Rules across keys; errors name the full key under ``where`` (``experiments.<name>``)."""
        for name, raw in self.methods.items():
            if name not in REGISTRY:
                raise ParamError(f"unknown method {where}.methods.{name}: use one of {', '.join(sorted(REGISTRY))}")
            build(REGISTRY[name].Config, raw, f"{where}.methods.{name}")

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
        return SELECTION_METRIC[self.scenario]

    @property
    def mlflow_experiment(self) -> str:
        return MLFLOW_EXPERIMENT[self.scenario]

    def method_config(self, name: str) -> Any:
        """The method's Config: code defaults overridden by ``methods.<name>`` of params."""
        if name not in REGISTRY:
            raise ParamError(f"unknown method {name!r}: use one of {', '.join(sorted(REGISTRY))}")
        return build(REGISTRY[name].Config, self.methods.get(name, {}), f"methods.{name}")


@dataclass
class RunConfig:
    experiments: list[str] = bounded(["lt"])
    methods: list[str] = bounded(["ce", "la", "meta_iada"])
    seeds: list[int] = bounded([0])
    device: Literal["auto", "cpu", "cuda"] = "auto"

    def __post_init__(self) -> None:
        for key in ("experiments", "methods", "seeds"):  # an empty or repeated entry gives a wrong report
            values = getattr(self, key)
            if not values:
                raise ParamError(f"run.{key} is empty: list at least one")
            repeated = sorted({v for v in values if values.count(v) > 1}, key=str)
            if repeated:
                raise ParamError(f"run.{key} = {values} repeats {repeated[0]!r}: list each once")
        negative = [s for s in self.seeds if s < 0]
        if negative:
            raise ParamError(f"run.seeds = {self.seeds}: seed {negative[0]} is negative; use seeds >= 0")


@dataclass
class Params:
    run: RunConfig
    experiments: dict[str, ExperimentConfig]
    tune: dict[str, Any] = field(default_factory=dict)  # validated by pipeline.tuning.study

    def __post_init__(self) -> None:
        for i, name in enumerate(self.run.experiments):
            if name not in self.experiments:
                raise ParamError(f"run.experiments[{i}] = {name!r} is not declared: use one of "
                                 f"{', '.join(self.experiments)}")
        for i, name in enumerate(self.run.methods):
            if name not in REGISTRY:
                raise ParamError(f"run.methods[{i}] = {name!r} is unknown: use one of "
                                 f"{', '.join(sorted(REGISTRY))}")
        for exp in self.run.experiments:  # the train stage's params dependency names the block
            for name in self.run.methods:
                if name not in self.experiments[exp].methods:
                    raise ParamError(f"experiments.{exp}.methods has no block for method {name!r} of "
                                     f"run.methods: add `{name}: {{}}` (code defaults) or its hyperparameters")

    def experiment(self, name: str) -> ExperimentConfig:
        if name not in self.experiments:
            raise ParamError(f"unknown experiment {name!r}: use one of {', '.join(self.experiments)}")
        return self.experiments[name]


def parse_params(raw: Any) -> Params:
    if not isinstance(raw, dict):
        raise ParamError("params.yaml must be a mapping with keys run, experiments, tune")
    unknown = sorted(set(raw) - set(TOP_LEVEL_KEYS))
    if unknown:
        raise ParamError(f"unknown top-level key {unknown[0]!r} in params.yaml: allowed keys are "
                         f"{', '.join(TOP_LEVEL_KEYS)}")
    exps = raw.get("experiments")
    if not isinstance(exps, dict) or not exps:
        raise ParamError("experiments must be a non-empty mapping of experiment name -> settings")
    experiments = {name: build(ExperimentConfig, cfg, f"experiments.{name}") for name, cfg in exps.items()}
    for name, exp in experiments.items():
        exp.check_schedule(f"experiments.{name}")
    return Params(build(RunConfig, raw.get("run"), "run"), experiments, raw.get("tune") or {})


def load_params(path: str | Path = PARAMS_FILE) -> Params:
    """Read and validate ``params.yaml``."""
    path = Path(path)
    if not path.is_file():
        raise ParamError(f"{path} not found: run from the project root or pass --params")
    text = path.read_text()
    try:
        reject_aliases(text, path)
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ParamError(f"{path} is not valid YAML: {err}") from err
    return parse_params(raw)


def reject_aliases(text: str, path: str | Path = PARAMS_FILE) -> None:
    """Refuse YAML anchors, aliases and merge keys: ``dvc exp run -S key=value`` edits params.yaml
    through a round trip that drops a change made through an alias (``methods: *methods``) or a
    merge (``<<: *lt``), so the run would silently keep the old value."""
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        line = event.start_mark.line + 1
        if isinstance(event, yaml.AliasEvent):
            raise ParamError(f"{path} line {line}: YAML alias *{event.anchor} is not allowed (dvc exp run -S "
                             "drops changes made through it): write the block out in full")
        if getattr(event, "anchor", None):
            raise ParamError(f"{path} line {line}: YAML anchor &{event.anchor} is not allowed (dvc exp run -S "
                             "drops changes made through its aliases): write each block out in full")
        if isinstance(event, yaml.ScalarEvent) and event.value == "<<" and event.style is None:
            raise ParamError(f"{path} line {line}: YAML merge key << is not allowed (dvc exp run -S drops "
                             "changes made through it): write the block out in full")


def config_hash(*parts: Any) -> str:
    """Stable hash of configs (dataclasses or plain data), for resume checks."""
    blob = json.dumps([to_dict(p) for p in parts], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
