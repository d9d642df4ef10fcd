"""``params.yaml`` and ``params/*.yaml`` beside it: read once, completely, into typed objects
before any work.

Layout (each top-level block in one file; ``experiments`` may be split by experiment)::

    params.yaml:
      run:          # what `dvc repro` runs: the matrix experiment x method x seed
        experiments: [lt]
        methods: [ce, la, meta_iada]
        seeds: [0]
      methods:      # each method's hyperparameters, once: every experiment's defaults
        meta_iada: {alpha: 0.5, ...}
      experiments:  # named experiments (scenario + data + network + schedule + method params)
        lt: {data: {...}, network: {...}, optim: {...}, pretrain_epochs: .., train_epochs: ..,
             search: {...}}
    params/experiments.yaml:
      experiments:
        lt_ref: {base: lt, data: {val_per_class: 100}, ...}  # what differs from its base
    params/tune.yaml:
      tune: {...}   # Optuna studies (pipeline.params.tune) and tuning budgets (pipeline.params.budget)
    params/reference.yaml:
      reference: {...}  # the committed reference sweep (pipeline.params.reference)

Why several files: ``dvc exp show`` prints a column for every leaf of ``params.yaml`` (DVC's
default params file) but only the hash of a file that a stage depends on, so the experiments,
studies and sweeps that ``dvc repro`` does not run live beside it.

:func:`load_params` gives a :class:`Params` whose experiments, resolved from their bases and the
``methods`` block (:mod:`pipeline.params.inherit`), hold their method configs and search spaces
and whose ``tune`` holds every study, all validated: an unknown key, a value out of range, an
unknown method, base, experiment or study, a cycle of bases, or an experiment or study name that
is not :data:`~pipeline.params.schema.NAME` (names become folders) stops with one
:class:`~pipeline.params.schema.ParamError` naming the key; a block or experiment written in two
files, or a file of ``params/`` that is not YAML, names the files.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from pipeline.methods import method_class
from pipeline.networks import Compile
from pipeline.params.budget import add_tuned_variants, check_budgets
from pipeline.params.experiment import ExperimentConfig
from pipeline.params.inherit import base_order, resolve_experiments
from pipeline.params.reference import ReferenceConfig, check_reference
from pipeline.params.schema import ParamError, bounded, build, check_finite, check_name
from pipeline.params.tune import TuneConfig, check_tune

PARAMS_FILE = "params.yaml"
PARAMS_DIR = "params"  # params/*.yaml beside params.yaml: more of its top-level blocks
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
    written: dict[str, str] = field(default_factory=dict)  # dotted key -> the params file writing it (set_option)

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


def parse_params(raw: Any, written: Mapping[str, str] | None = None) -> Params:
    """Validate ``raw`` (every block, as :func:`read_params` merges them); ``written``: the file
    that writes each dotted key (default: params.yaml writes them all)."""
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
    for name, space in search_spaces(raw.get("tune"), exps).items():
        resolved[name] = {**resolved[name], "search": space}
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
    if written is None:
        written = dict.fromkeys(written_keys(raw), PARAMS_FILE)
    return Params(build(RunConfig, raw.get("run"), "run"), experiments, tune, reference, dict(written))


def search_spaces(tune: Any, experiments: Mapping[str, Any]) -> dict[str, Any]:
    """``tune.search``: each experiment's Optuna search space, by experiment name (written beside
    the studies in params/tune.yaml, not in the experiment, so that params.yaml's leaves, which
    `dvc exp show` lists, are the settings of runs). A non-empty ``search`` block in an experiment is
    refused (an empty one, as a config written back as data has, says nothing)."""
    for name, block in experiments.items():
        if isinstance(block, Mapping) and block.get("search"):
            raise ParamError(f"experiments.{name}.search: an experiment's search space is written under "
                             f"tune.search.{name} (params/tune.yaml)")
    spaces = tune.get("search") if isinstance(tune, Mapping) else None
    if spaces is None:
        return {}
    if not isinstance(spaces, Mapping):
        raise ParamError(f"tune.search must be a mapping of experiment name -> search space, got {spaces!r}")
    for name, space in spaces.items():
        if name not in experiments:
            raise ParamError(f"tune.search.{name}: there is no experiment {name!r} (experiments: "
                             f"{', '.join(experiments)})")
        if not isinstance(space, Mapping):
            raise ParamError(f"tune.search.{name} must be a mapping of dotted key -> search space, got {space!r}")
        check_finite(space, f"tune.search.{name}")  # named where it is written (not experiments.<name>.search)
    return dict(spaces)


def set_option(written: Mapping[str, str], key: str, value: str) -> str:
    """The ``dvc exp run -S`` argument that sets the dotted ``key`` (``written``: ``Params.written``):
    ``key=value`` for a key a params file writes, ``+key=value`` for one that only has a default
    (inherited from a base or the ``methods`` block, or the code's); DVC refuses the other form.
    Prefixed with ``params/<file>.yaml:`` when the key, or the innermost block written that holds it
    (``experiments.lt_ref``), is in a file of ``params/``."""
    parts = key.split(".")
    holders = (".".join(parts[:n]) for n in range(len(parts), 0, -1))
    file = next((written[k] for k in holders if k in written), PARAMS_FILE)
    return f"{'' if file == PARAMS_FILE else file + ':'}{'' if key in written else '+'}{key}={value}"


def written_keys(node: Any, prefix: str = "") -> list[str]:
    """Every dotted key of a mapping, inner ones included (``a``, ``a.b``, ...)."""
    if not isinstance(node, dict):
        return []
    return [k for key, value in node.items()
            for k in (f"{prefix}{key}", *written_keys(value, f"{prefix}{key}."))]


def load_params(path: str | Path = PARAMS_FILE) -> Params:
    """Read and validate ``params.yaml`` and the files of ``params/`` beside it."""
    return parse_params(*read_params(path))


def read_params(path: str | Path = PARAMS_FILE) -> tuple[dict[str, Any], dict[str, str]]:
    """``path`` (params.yaml) and every ``params/*.yaml`` beside it as one mapping, and the file that
    writes each dotted key (``params.yaml``, ``params/<name>.yaml``: the -S prefix of set_option). A
    top-level block is written in one file, except ``experiments``, whose experiments may be in any."""
    path = Path(path)
    if not path.is_file():
        raise ParamError(f"{path} not found: run from the project root or pass --params")
    raw: dict[str, Any] = {}
    written: dict[str, str] = {}
    where: dict[str, Path] = {}  # top-level block or experiments.<name> -> the file that writes it
    for file, name in [(path, PARAMS_FILE), *((f, f"{PARAMS_DIR}/{f.name}") for f in extra_files(path))]:
        blocks = read_yaml(file)
        for key, value in blocks.items():
            if key == "experiments":
                if not isinstance(value, dict):
                    raise ParamError(f"experiments in {file} must be a mapping of experiment name -> settings, "
                                     f"got {value!r}")
                for exp in value:
                    claim(where, f"experiments.{exp}", file)
                raw.setdefault(key, {}).update(value)
            else:
                claim(where, key, file)
                raw[key] = value
        for key in written_keys(blocks):
            written.setdefault(key, name)  # (experiments: params.yaml's, the prefix of a new experiment)
    return raw, written


def extra_files(path: Path) -> list[Path]:
    """The ``*.yaml`` files of ``params/`` beside ``path``, in name order (hidden files are skipped);
    anything else there is refused, so that a misnamed file (``tune.yml``) is not silently ignored."""
    folder = path.parent / PARAMS_DIR
    if not folder.is_dir():
        return []
    files = sorted(f for f in folder.iterdir() if not f.name.startswith("."))
    for f in files:
        if f.suffix != ".yaml" or not f.is_file():
            raise ParamError(f"{f} is not a params file: {folder} holds only .yaml files of params.yaml's "
                             f"top-level blocks ({', '.join(TOP_LEVEL_KEYS)}); rename or move it")
    return files


def claim(where: dict[str, Path], key: str, file: Path) -> None:
    if key in where:
        what = f"experiment {key.split('.', 1)[1]!r}" if key.startswith("experiments.") else f"block {key!r}"
        raise ParamError(f"{what} is written in both {where[key]} and {file}: keep one")
    where[key] = file


def read_yaml(path: Path) -> dict[str, Any]:
    """One params file as a mapping of top-level blocks; a YAML error, an alias, a key given twice or
    an unknown top-level key names the file and line."""
    text = path.read_text()
    try:
        reject_aliases(text, path)
        loader = _UniqueKeyLoader(text)
        loader.name = str(path)  # (the error messages' file)
        try:
            node = loader.get_single_node()
            raw = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except yaml.YAMLError as err:
        raise ParamError(f"{path} is not valid YAML: {err}") from err
    if not isinstance(raw, dict):
        raise ParamError(f"{path} must be a mapping with keys among {', '.join(TOP_LEVEL_KEYS)}")
    for key_node, _ in node.value:
        if key_node.value not in TOP_LEVEL_KEYS:
            raise ParamError(f"{path} line {key_node.start_mark.line + 1}: unknown top-level key {key_node.value!r}: "
                             f"allowed keys are {', '.join(TOP_LEVEL_KEYS)}")
    return raw


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
