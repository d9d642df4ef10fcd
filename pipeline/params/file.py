"""``params.yaml``: read once, completely, into typed objects before any work.

Layout::

    run:          # what `dvc repro` runs: the matrix experiment x method x seed
      experiments: [lt]
      methods: [ce, la, meta_iada]
      seeds: [0]
    methods:      # each method's hyperparameters, once: every experiment's defaults
      meta_iada: {alpha: 0.5, ...}
    experiments:  # named experiments (scenario + data + network + schedule + method params)
      lt: {data: {...}, network: {...}, optim: {...}, pretrain_epochs: .., train_epochs: ..,
           search: {...}}
      lt_ref: {base: lt, data: {val_per_class: 100}, ...}  # what differs from its base
    tune: {...}   # Optuna studies (pipeline.params.tune) and tuning budgets (pipeline.params.budget)
    reference: {...}  # the committed reference sweep (pipeline.params.reference)

:func:`load_params` gives a :class:`Params` whose experiments, resolved from their bases and the
``methods`` block (:mod:`pipeline.params.inherit`), hold their method configs and search spaces
and whose ``tune`` holds every study, all validated: an unknown key, a value out of range, an
unknown method, base, experiment or study, a cycle of bases, or an experiment or study name that
is not :data:`~pipeline.params.schema.NAME` (names become folders) stops with one
:class:`~pipeline.params.schema.ParamError` naming the key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipeline.methods import method_class
from pipeline.networks import Compile
from pipeline.params.budget import add_tuned_variants, check_budgets
from pipeline.params.experiment import ExperimentConfig
from pipeline.params.inherit import base_order, resolve_experiments
from pipeline.params.reference import ReferenceConfig, check_reference
from pipeline.params.schema import ParamError, bounded, build, check_name
from pipeline.params.tune import TuneConfig, check_tune

PARAMS_FILE = "params.yaml"
TOP_LEVEL_KEYS = ("run", "methods", "experiments", "tune", "reference")
DEVICE = re.compile(r"auto|cpu|cuda(:[0-9]+)?")  # cuda:N: one run per GPU on a multi-device machine


@dataclass
class RunConfig:
    experiments: list[str] = bounded(["lt"])
    methods: list[str] = bounded(["ce", "la", "meta_iada"])
    seeds: list[int] = bounded([0])
    device: str = "auto"
    # An execution choice like the device (the same training up to the kernels' rounding): outside
    # every configuration hash and resolved config, so a run resumes across it (docs/precision.md).
    compile: Compile = "none"

    def __post_init__(self) -> None:
        if not DEVICE.fullmatch(self.device):
            raise ParamError(f"run.device = {self.device!r} is not a device: use auto, cpu, cuda or cuda:N "
                             "(N = the GPU's index, e.g. cuda:1)")
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
    tune: TuneConfig = field(default_factory=TuneConfig)
    reference: ReferenceConfig = field(default_factory=ReferenceConfig)
    written: frozenset[str] = frozenset()  # every dotted key params.yaml writes (see set_option)

    def __post_init__(self) -> None:
        for i, name in enumerate(self.run.experiments):
            if name not in self.experiments:
                raise ParamError(f"run.experiments[{i}] = {name!r} is not declared: use one of "
                                 f"{', '.join(self.experiments)}")
        for i, name in enumerate(self.run.methods):
            method_class(name, f"run.methods[{i}]")
        for exp in self.run.experiments:  # the train stage's params dependency names the block
            for name in self.run.methods:
                if name not in self.experiments[exp].methods:
                    raise ParamError(f"experiments.{exp}.methods has no block for method {name!r} of "
                                     f"run.methods: add `{name}: {{}}` (code defaults) or its hyperparameters "
                                     "there or under methods")

    def experiment(self, name: str) -> ExperimentConfig:
        """The experiment called ``name`` (e.g. a command line's ``--experiment``)."""
        check_name(name, "experiment")
        if name not in self.experiments:
            raise ParamError(f"unknown experiment {name!r}: use one of {', '.join(self.experiments)}")
        return self.experiments[name]


def parse_params(raw: Any) -> Params:
    if not isinstance(raw, dict):
        raise ParamError("params.yaml must be a mapping with keys " + ", ".join(TOP_LEVEL_KEYS))
    unknown = sorted(set(raw) - set(TOP_LEVEL_KEYS))
    if unknown:
        raise ParamError(f"unknown top-level key {unknown[0]!r} in params.yaml: allowed keys are "
                         f"{', '.join(TOP_LEVEL_KEYS)}")
    exps, methods = raw.get("experiments"), raw.get("methods")
    if not isinstance(exps, dict) or not exps:
        raise ParamError("experiments must be a non-empty mapping of experiment name -> settings")
    if methods is not None and not isinstance(methods, dict):
        raise ParamError(f"methods must be a mapping of method name -> hyperparameters, got {methods!r}")
    for name, block in (methods or {}).items():  # a mistake here is named here, not in every experiment
        build(method_class(name, f"methods.{name}").Config, block, f"methods.{name}")
    for name in exps:
        check_name(name, "experiment name")
    resolved = resolve_experiments(exps, methods)
    experiments = {}
    for name in base_order(exps):  # a mistake in a base is named there, before its heirs
        experiments[name] = exp = build(ExperimentConfig, resolved[name], f"experiments.{name}")
        exp.name = name
        exp.check_schedule(f"experiments.{name}")
    experiments = {name: experiments[name] for name in exps}
    tune = build(TuneConfig, raw.get("tune"), "tune")
    check_tune(tune, experiments)
    reference = build(ReferenceConfig, raw.get("reference"), "reference")
    check_budgets(tune, experiments, reference)
    add_tuned_variants(tune, reference)
    check_reference(reference, experiments)
    return Params(build(RunConfig, raw.get("run"), "run"), experiments, tune, reference, frozenset(written_keys(raw)))


def set_option(written: frozenset[str], key: str, value: str) -> str:
    """The ``dvc exp run -S`` argument that sets the dotted ``key`` (``written``: ``Params.written``):
    ``key=value`` for a key params.yaml writes, ``+key=value`` for one that only has a default
    (inherited from a base or the ``methods`` block, or the code's); DVC refuses the other form."""
    return f"{'' if key in written else '+'}{key}={value}"


def written_keys(node: Any, prefix: str = "") -> list[str]:
    """Every dotted key of a mapping, inner ones included (``a``, ``a.b``, ...)."""
    if not isinstance(node, dict):
        return []
    return [k for key, value in node.items()
            for k in (f"{prefix}{key}", *written_keys(value, f"{prefix}{key}."))]


def load_params(path: str | Path = PARAMS_FILE) -> Params:
    """Read and validate ``params.yaml``."""
    path = Path(path)
    if not path.is_file():
        raise ParamError(f"{path} not found: run from the project root or pass --params")
    text = path.read_text()
    try:
        reject_aliases(text, path)
        loader = _UniqueKeyLoader(text)
        loader.name = str(path)  # (the error messages' file)
        try:
            raw = loader.get_single_data()
        finally:
            loader.dispose()
    except yaml.YAMLError as err:
        raise ParamError(f"{path} is not valid YAML: {err}") from err
    return parse_params(raw)


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key given twice in one mapping is an error (PyYAML
    keeps the last silently; DVC's reader refuses the file, so every ``dvc exp run`` would fail)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[object, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise ParamError(f"{self.name} line {line}: key {key!r} is given twice in one block (first at line "
                                 f"{seen[key]}): keep one")
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def reject_aliases(text: str, path: str | Path = PARAMS_FILE) -> None:
    """Refuse YAML anchors, aliases and merge keys: ``dvc exp run -S key=value`` edits params.yaml
    through a round trip that drops a change made through an alias (``methods: *methods``) or a
    merge (``<<: *lt``), so the run would silently keep the old value."""
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        line = event.start_mark.line + 1
        if isinstance(event, yaml.AliasEvent):
            raise ParamError(f"{path} line {line}: YAML alias *{event.anchor} is not allowed (dvc exp run -S "
                             "drops changes made through it): write the value itself (an experiment inherits with base:)")
        if getattr(event, "anchor", None):
            raise ParamError(f"{path} line {line}: YAML anchor &{event.anchor} is not allowed (dvc exp run -S "
                             "drops changes made through its aliases): write the value itself (an experiment inherits with "
                             "base:)")
        if isinstance(event, yaml.ScalarEvent) and event.value == "<<" and event.style is None:
            raise ParamError(f"{path} line {line}: YAML merge key << is not allowed (dvc exp run -S drops "
                             "changes made through it): write the value itself (an experiment inherits with base:)")
