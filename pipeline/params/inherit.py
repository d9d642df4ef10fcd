"""Experiments written as deltas: each experiment of ``params.yaml`` is its ``base`` with what it
writes changed, and every experiment starts from the ``methods:`` block (each method's
hyperparameters, written once). Resolved here, on plain mappings, before anything is typed::

    methods:                    # every experiment's method hyperparameters
      meta_iada: {alpha: 0.5, beta: 1.0, ...}
    experiments:
      lt: {data: {...}, optim: {...}, ...}    # no base: written in full
      lt_ref:
        base: lt                # lt with these keys changed
        data: {val_per_class: 100}
        methods:
          meta_iada: {class_balanced: false}  # this experiment's own values (and its heirs')

The rule (detectron2's ``_BASE_``): a mapping merges key by key, any other value (a number, a
list, null) replaces the base's. ``search`` is not inherited: a study's search space is sized for
the experiment that writes it. A value that follows from another is not written at all: it is
derived where the config is resolved (``ExperimentConfig.method_config``: LDAM-DRW's
``drw_epoch`` from the lr milestones).

Why the loader and not YAML anchors or DVC's Hydra composition: ``dvc exp run -S`` drops a change
made through an alias, and Hydra composition rewrites ``params.yaml`` from ``conf/`` on every
``dvc exp run``, so the file would again hold every experiment in full (and every one of its
leaves as a column of ``dvc exp show``).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from pipeline.params.schema import ParamError

BASE = "base"
NOT_INHERITED = ("search",)


def merge(base: Mapping[str, Any], delta: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``delta`` merged in: mappings key by key, any other value replaces."""
    out = copy.deepcopy(dict(base))
    for key, value in delta.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def base_order(experiments: Mapping[str, Any]) -> list[str]:
    """The experiments' names with every base before its heirs (file order otherwise). A base
    that is not a declared experiment, or a chain of bases that comes back to itself, is a
    :class:`ParamError` naming the key."""
    order: list[str] = []
    for name in experiments:
        chain = [name]
        while chain[-1] not in order:
            delta = experiments[chain[-1]]
            base = delta.get(BASE) if isinstance(delta, Mapping) else None
            if base is None:
                break
            where = f"experiments.{chain[-1]}.{BASE}"
            if not isinstance(base, str) or base not in experiments:
                raise ParamError(f"{where} = {base!r} is not an experiment: name one of "
                                 f"{', '.join(n for n in experiments if n != chain[-1])}")
            if base in chain:
                cycle = " -> ".join(chain[chain.index(base):] + [base])
                raise ParamError(f"{where} = {base!r} closes a cycle of bases ({cycle}): one of them must be "
                                 "written without a base")
            chain.append(base)
        order += [n for n in reversed(chain) if n not in order]
    return order


def resolve_experiments(experiments: Mapping[str, Any], methods: Mapping[str, Any] | None) -> dict[str, Any]:
    """Every experiment as a full mapping (no ``base``), in file order: its base's (``methods``
    for an experiment without one) with its own keys merged in."""
    roots = {"methods": dict(methods or {})}
    resolved: dict[str, Any] = {}
    for name in base_order(experiments):
        delta = experiments[name]
        if not isinstance(delta, Mapping):
            resolved[name] = delta  # build() says what it must be
            continue
        delta = dict(delta)
        base = delta.pop(BASE, None)
        start = roots if base is None else {k: v for k, v in resolved[base].items() if k not in NOT_INHERITED}
        resolved[name] = merge(start, delta)
    return {name: resolved[name] for name in experiments}
