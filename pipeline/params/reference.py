"""The ``reference:`` section of ``params.yaml``: the reference sweep (``python -m
pipeline.stages.reference run``), whose metrics are committed under ``reference/metrics/`` and
whose tables and figures (``reports/reference/``) are rebuilt from them without retraining.

    reference:
      seeds: [0, 1, 2]
      split: per_seed          # per_seed: seed s also draws the split (data.seed = s); fixed: data.seed
      subject: meta_iada       # the method under study: every other method is a baseline
      experiments:
        lt_ref:
          methods: [ce, la, meta_iada]
          variants:            # label -> a method with experiment keys changed (other protocols, ablations)
            la-scratch: {method: la, set: {protocol: scratch}}
            meta_iada-gradient: {method: meta_iada, set: {methods.meta_iada.direction: gradient}}

A run is named by its *label*: the method's name, or the variant's. Every label, method and key
is checked here, before any work: an unknown method, a key the experiment does not have, or a
label used twice stops with one :class:`~pipeline.params.schema.ParamError`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

from pipeline.params.experiment import ExperimentConfig, apply_values
from pipeline.params.schema import ParamError, bounded, to_dict

LABEL = re.compile(r"^[a-z][a-z0-9_]*(-[a-z0-9_]+)*\Z")  # \Z: "$" would match before a final newline


@dataclass
class Variant:
    method: str
    set: dict[str, Any] = field(default_factory=dict)  # dotted keys of the experiment -> value
    # The seeds it runs, some of reference.seeds (None: all): for a diagnostic run whose answer
    # one seed gives (a configuration that does not train), so the sweep does not repeat it.
    seeds: list[int] | None = None


@dataclass
class ReferenceExperiment:
    methods: list[str] = bounded([])
    variants: dict[str, Variant] = field(default_factory=dict)
    # Further paired differences to report, label -> the label it is compared with seed by seed
    # (e.g. meta_iada: isda-cb, Ω's own contribution over ISDA with the same class weights).
    compare: dict[str, str] = field(default_factory=dict)

    def labels(self) -> dict[str, Variant]:
        """Every run of a seed, label -> (method, changed keys), methods first, in file order."""
        return {**{m: Variant(m) for m in self.methods}, **self.variants}


@dataclass
class ReferenceConfig:
    seeds: list[int] = bounded([0, 1, 2])
    # per_seed: seed s draws the split too (data.seed = s), so the spread over seeds holds both
    # sources of variance; fixed: every seed trains on the experiment's own data.seed split.
    split: Literal["per_seed", "fixed"] = "per_seed"
    subject: str = "meta_iada"  # the method under study; the best other method is "the best baseline"
    experiments: dict[str, ReferenceExperiment] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(set(self.seeds)) != len(self.seeds) or any(s < 0 for s in self.seeds):
            raise ParamError(f"reference.seeds = {self.seeds}: list distinct seeds >= 0")

    def seeds_of(self, variant: Variant) -> list[int]:
        """The seeds a label runs: ``seeds``, or the variant's own subset of them."""
        return [s for s in self.seeds if variant.seeds is None or s in variant.seeds]

    def split_seed(self, exp: ExperimentConfig, seed: int) -> int:
        return seed if self.split == "per_seed" else exp.data.seed


def check_reference(ref: ReferenceConfig, experiments: dict[str, ExperimentConfig]) -> None:
    """Every reference experiment is declared, every method has its block in the experiment,
    every label is unique and file-name safe, and every variant builds a valid experiment."""
    for name, sweep in ref.experiments.items():
        where = f"reference.experiments.{name}"
        if name not in experiments:
            raise ParamError(f"{where}: experiment {name!r} is not declared under experiments")
        exp = experiments[name]
        seen = set()
        for i, method in enumerate(sweep.methods):
            if method in seen:
                raise ParamError(f"{where}.methods repeats {method!r}: list each once")
            seen.add(method)
            if method not in exp.methods:
                raise ParamError(f"{where}.methods[{i}] = {method!r} has no block in experiments.{name}.methods")
        for label, variant in sweep.variants.items():
            vwhere = f"{where}.variants.{label}"
            if label in seen or not LABEL.match(label):
                raise ParamError(f"{vwhere}: a label must be new (not a method's name) and look like "
                                 "'meta_iada-gradient' (lower case, digits, _ and -)")
            if variant.method not in exp.methods:
                raise ParamError(f"{vwhere}.method = {variant.method!r} has no block in experiments.{name}.methods")
            if variant.seeds is not None and (not variant.seeds or not set(variant.seeds) <= set(ref.seeds)):
                raise ParamError(f"{vwhere}.seeds = {variant.seeds}: list some of reference.seeds {ref.seeds} "
                                 "(or leave it out for all of them)")
            variant_experiment(exp, variant, vwhere)
        for label, other in sweep.compare.items():
            if label not in sweep.labels() or other not in sweep.labels() or label == other:
                raise ParamError(f"{where}.compare: {label!r}: {other!r} must pair two different labels of the sweep "
                                 f"({', '.join(sweep.labels())})")
        if ref.subject not in {v.method for v in sweep.labels().values()}:
            raise ParamError(f"{where} does not run reference.subject = {ref.subject!r}: add it to methods")


def variant_experiment(exp: ExperimentConfig, variant: Variant, where: str, *, data_seed: int | None = None
                       ) -> ExperimentConfig:
    """The experiment a variant runs: ``exp`` with the variant's keys (and ``data.seed``) set,
    validated like params.yaml. A key the experiment does not have is an error (not a new key)."""
    raw = to_dict(exp)
    flat_keys = set(_dotted(raw))
    for key in variant.set:
        if key not in flat_keys:
            raise ParamError(f"{where}.set: {key!r} is not a key of experiments.{exp.name} (e.g. protocol, "
                             f"methods.{variant.method}.<hyperparameter>)")
        if key.split(".")[0] in ("data", "search"):
            raise ParamError(f"{where}.set: {key!r} cannot change in a variant (the variants of a seed share "
                             "its data; declare another experiment)")
    values = dict(variant.set)
    if data_seed is not None:
        values["data.seed"] = data_seed
    out = apply_values(raw, values, where)
    out.search = exp.search
    out.name = exp.name
    out.check_schedule(where)
    return out


def _dotted(d: dict[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for k, v in d.items():
        keys.append(prefix + k)
        if isinstance(v, dict):
            keys += _dotted(v, f"{prefix}{k}.")
    return keys
