"""MLflow logged models and the model registry (the model side of :mod:`pipeline.tracking`): a
run's learned networks as MLflow models, registered and promoted, and the prepared data set as
the run's input."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow
from mlflow.tracking import MlflowClient

from pipeline.layout import json_safe, workdir

PIP_REQUIREMENTS = ["torch==2.14.1", "torchvision==0.29.1"]


def registered_model_name(experiment: str) -> str:
    """Registry name of a learned perturbation network: says the experiment of params.yaml
    (``lt`` and ``lt_paper`` differ, and runs of a small test experiment do not add versions to
    the real experiment's model)."""
    return f"perturbation_net-{experiment}"


def log_network(module: Any, name: str, register_as: str | None) -> str | None:
    """Log a learned network as an MLflow model (pickle format: loads as its own class) with a
    signature and an input example, registered as ``register_as``; returns the registered
    version (None when not registered)."""
    import copy

    import mlflow.pytorch
    import numpy as np
    import torch
    from mlflow.models import infer_signature

    module = copy.deepcopy(module).cpu().eval()
    inputs = next(m for m in module.modules() if isinstance(m, torch.nn.Linear)).in_features
    example = np.random.default_rng(0).standard_normal((4, inputs)).astype(np.float32)  # [B, K] characteristics
    with torch.no_grad():
        output = module(torch.from_numpy(example)).numpy()
    info = mlflow.pytorch.log_model(module, name=name, serialization_format="pickle",
                                    pip_requirements=PIP_REQUIREMENTS, code_paths=[str(workdir() / "pipeline")],
                                    registered_model_name=register_as, signature=infer_signature(example, output),
                                    input_example=example)
    if register_as is None or info.registered_model_version is None:
        return None
    return str(info.registered_model_version)


CHAMPION = "champion"  # alias of the registered version with the best validation value


def promote(name: str, version: str, metric: str, value: float) -> None:
    """Describe the registered model, tag the version with its validation value, and point the
    alias ``champion`` at it when no version holds the alias or this one's value is higher."""
    client = MlflowClient()
    client.update_registered_model(name, description=(
        f"Perturbation networks Ω of Meta-IADA runs of experiment {name.split('-', 1)[-1]!r} (params.yaml): "
        "ε_i = Ω(c_i) from the 15 training characteristics; input [B, K] float32 characteristics, "
        "output [B] ε. Alias 'champion': the version whose run has the best validation-selected "
        f"{metric}."))
    if not math.isfinite(value):
        return
    client.set_model_version_tag(name, version, metric, str(value))
    try:
        best = client.get_model_version_by_alias(name, CHAMPION)
        current = float(best.tags.get(metric, "-inf"))
    except mlflow.exceptions.MlflowException:
        current = -math.inf
    if value > current:
        client.set_registered_model_alias(name, CHAMPION, version)


def log_dataset(card: Mapping[str, Any], data_dir: Path) -> None:
    """The prepared data set as the run's MLflow input: its folder as source, and as digest a
    hash of its data card (source checksums, config, counts), so runs on the same data share it."""
    import hashlib
    import warnings

    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    digest = hashlib.sha256(json.dumps(json_safe(dict(card)), sort_keys=True).encode()).hexdigest()[:16]
    dataset = card.get("source", {}).get("dataset", "data")
    name = f"{dataset} {card.get('scenario', '')}".strip()
    with warnings.catch_warnings():  # MLflow 3.17 registers the local source twice and says so
        warnings.simplefilter("ignore", UserWarning)
        source = resolve_dataset_source(str(data_dir.resolve()))  # a LocalArtifactDatasetSource
    mlflow.log_input(MetaDataset(source, name=name, digest=digest), context="training")
