"""An experiment's runs as the stages (and the studies' pretraining) run them: the CE
pretraining and a method's run from its checkpoint, with their folders from
:mod:`pipeline.layout` and, with ``track``, an MLflow run each."""

from __future__ import annotations

from typing import Any

from pipeline.data.prepared import load_prepared
from pipeline.engine.loop import RunSpec, fit
from pipeline.layout import LAST, PRETRAIN, Tree, pipeline_tree, run_name
from pipeline.networks import Compile
from pipeline.params.experiment import ExperimentConfig


def pretrain(exp: ExperimentConfig, seed: int, *, device: str = "auto", track: bool = True,
             tree: Tree | None = None, tags: dict[str, str] | None = None, label: str = PRETRAIN,
             compile_mode: Compile = "none") -> dict[str, Any]:
    """Cross-entropy for the experiment's ``pretrain_epochs`` (method.md §6) into
    ``models/<experiment>/s<seed>/pretrain`` (or ``tree``'s, or the run folder ``label``);
    resumes an interrupted run."""
    return _run(exp, "ce", seed, label, device=device, track=track, tree=tree, tags=tags, pretraining=True,
                compile_mode=compile_mode)


def train(exp: ExperimentConfig, method: str, seed: int, *, device: str = "auto", track: bool = True,
          tree: Tree | None = None, label: str | None = None, tags: dict[str, str] | None = None,
          pretrain_label: str = PRETRAIN, compile_mode: Compile = "none") -> dict[str, Any]:
    """``method`` into ``models/<experiment>/s<seed>/<label>`` (``label`` defaults to the method;
    ``tree`` to the DVC pipeline's folders): with ``protocol: deferred`` from the ``last.pt`` of
    the pretraining in ``pretrain_label`` for ``train_epochs`` (every method of one experiment
    and seed starts from the same checkpoint and seed), with ``scratch`` over the whole schedule
    from a seeded random initialisation; resumes an interrupted run."""
    return _run(exp, method, seed, label or method, device=device, track=track, tree=tree, tags=tags,
                pretrain_label=pretrain_label, compile_mode=compile_mode)


def _run(exp: ExperimentConfig, method: str, seed: int, label: str, *, device: str, track: bool,
         tree: Tree | None, tags: dict[str, str] | None, pretraining: bool = False,
         pretrain_label: str = PRETRAIN, compile_mode: Compile = "none") -> dict[str, Any]:
    """The pretraining (``pretraining``: epochs [0, pretrain_epochs) from a random init) or a
    method's run (deferred: epochs [pretrain_epochs, total) from the pretraining's ``last.pt``;
    scratch: epochs [0, total) from a random init)."""
    tree = tree or pipeline_tree(exp.name)
    data = load_prepared(tree.data)
    if pretraining:
        first_epoch, last_epoch, init = 0, exp.pretrain_epochs, None
    elif exp.protocol == "scratch":
        first_epoch, last_epoch, init = 0, exp.total_epochs, None
    else:
        first_epoch, last_epoch = exp.pretrain_epochs, exp.total_epochs
        init = tree.run_dir(seed, pretrain_label) / LAST
    spec = RunSpec(exp, data, method, seed, tree.run_dir(seed, label), first_epoch=first_epoch,
                   last_epoch=last_epoch, init=init, device=device, desc=run_name(exp.name, label, seed),
                   compile_mode=compile_mode)
    if not track:
        return fit(spec)
    from pipeline.tracking import RunTracker, registered_model_name

    tracker = RunTracker(exp.mlflow_experiment, run_name(exp.name, label, seed), card=data.card,
                         data_dir=tree.data,
                         tags={"stage": "pretrain" if pretraining else "train", "experiment": exp.name,
                               "method": PRETRAIN if pretraining else method, "label": label, "seed": str(seed),
                               "precision": exp.network.precision,
                               **({"compile": compile_mode} if compile_mode != "none" else {}), **(tags or {})},
                         register_as=registered_model_name(exp.name), input_shape=data.image_shape)
    try:
        return fit(spec, tracker=tracker)
    finally:
        tracker.close("FAILED")
