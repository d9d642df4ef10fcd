"""MLflow logged models and the model registry (the model side of :mod:`pipeline.tracking`): a
run's learned networks as MLflow models, registered and promoted, and the prepared data set as
the run's input."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from pipeline.layout import json_safe, workdir

PIP_REQUIREMENTS = ["torch==2.14.1", "torchvision==0.29.1"]


def registered_model_name(experiment: str) -> str:
    """Registry name of a learned perturbation network: says the experiment of params.yaml
    (``lt`` and ``lt_paper`` differ, and runs of a small test experiment do not add versions to
    the real experiment's model)."""
    return f"perturbation_net-{experiment}"


def log_network(module: Any, name: str, register_as: str | None, *,
                params: Mapping[str, Any] | None = None) -> tuple[str, str | None]:
    """Log a learned network as an MLflow model (pickle format: loads as its own class) with a
    signature, an input example and the run's ``params``, registered as ``register_as``; returns
    its logged-model id and the registered version (None when not registered)."""
    import torch

    inputs = next(m for m in module.modules() if isinstance(m, torch.nn.Linear)).in_features
    info = _log_module(module, name, (4, inputs), params=params, model_type="perturbation network",  # [B, K] c
                       registered_model_name=register_as)
    if register_as is None or info.registered_model_version is None:
        return info.model_id, None
    return info.model_id, str(info.registered_model_version)


def log_classifier(net: Any, weights: Path, input_shape: tuple[int, int, int], *,
                   params: Mapping[str, Any] | None = None) -> str:
    """Log the run's classifier with its validation-selected weights (``best.pt``, the ``selected``
    rule of the evaluation) as the MLflow model ``classifier`` (input [B, C, H, W] float32 images,
    output [B, classes] logits); returns its logged-model id."""
    import copy

    import torch

    net = copy.deepcopy(net)
    net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True)["model"])
    return _log_module(net, CLASSIFIER, (2, *input_shape), params=params, model_type="classifier").model_id


CLASSIFIER = "classifier"  # logged-model name of a run's classifier


def _log_module(module: Any, name: str, example_shape: tuple[int, ...], *, params: Mapping[str, Any] | None,
                model_type: str, registered_model_name: str | None = None) -> Any:
    """``mlflow.pytorch.log_model`` of a CPU fp32 copy of ``module`` with an input example of
    ``example_shape`` and the signature it gives; returns the ModelInfo."""
    import copy

    import mlflow.pytorch
    import numpy as np
    import torch
    from mlflow.models import infer_signature

    module = copy.deepcopy(module).cpu().float().eval()
    example = np.random.default_rng(0).standard_normal(example_shape).astype(np.float32)
    with torch.no_grad():
        output = module(torch.from_numpy(example)).numpy()
    return mlflow.pytorch.log_model(module, name=name, serialization_format="pickle",
                                    pip_requirements=PIP_REQUIREMENTS, code_paths=[str(workdir() / "pipeline")],
                                    registered_model_name=registered_model_name,
                                    signature=infer_signature(example, output), input_example=example,
                                    params={k: str(v)[:6000] for k, v in (params or {}).items()},
                                    model_type=model_type)


VERSION_TAGS = ("experiment", "method", "label", "seed", "precision")  # run tags a registered version repeats


def describe_version(name: str, version: str, run_name: str, tags: Mapping[str, str]) -> None:
    """Give a registered version a description (the run it came from) and the run's
    :data:`VERSION_TAGS`, so that the registry tells versions apart without opening their runs."""
    client = MlflowClient()
    what = ", ".join(f"{k} {tags[k]}" for k in VERSION_TAGS if k in tags)
    client.update_model_version(name, version, description=f"Learned in run {run_name!r} ({what}).")
    for key in VERSION_TAGS:
        if key in tags:
            client.set_model_version_tag(name, version, key, str(tags[key]))


def run_models(client: MlflowClient, run_id: str) -> dict[str, str]:
    """The models the run ``run_id`` logged: name -> logged-model id."""
    outputs = client.get_run(run_id).outputs
    ids = [o.model_id for o in outputs.model_outputs] if outputs else []
    return {client.get_logged_model(i).name: i for i in ids}


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


def linked_metrics(client: MlflowClient, run_id: str, values: Mapping[str, float],
                   card: Mapping[str, Any] | None, data_dir: Path | None) -> list[Metric]:
    """``values`` as MLflow metrics of ``run_id`` linked to their model and dataset (see
    :func:`log_evaluation`); logs the datasets they name as the run's inputs."""
    from mlflow.entities import DatasetInput, InputTag

    models = run_models(client, run_id)
    network = next((i for name, i in models.items() if name != CLASSIFIER), None)  # e.g. perturbation_net
    datasets: dict[str, Any] = {}
    now = int(time.time() * 1000)
    metrics = []
    for key, value in values.items():
        split, rule, _ = key.split("/", 2)
        split = "train" if split == "epsilon" else split  # ε of the training samples
        # the classifier model holds the selected weights (not the final ones); ε is the network's
        model = {"selected": models.get(CLASSIFIER), "last": network}.get(rule)
        if card is not None and data_dir is not None and split not in datasets:
            datasets[split] = prepared_dataset(card, data_dir, split)
        ds = datasets.get(split)
        metrics.append(Metric(key, value, now, 0, model_id=model, run_id=run_id,
                              dataset_name=ds.name if ds else None, dataset_digest=ds.digest if ds else None))
    logged = {(d.dataset.name, d.dataset.digest) for d in client.get_run(run_id).inputs.dataset_inputs}
    new = [DatasetInput(ds._to_mlflow_entity(), [InputTag("mlflow.data.context", CONTEXTS.get(split, "testing"))])
           for split, ds in datasets.items() if (ds.name, ds.digest) not in logged]
    if new:
        client.log_inputs(run_id, datasets=new)
    return metrics


def prepared_dataset(card: Mapping[str, Any], data_dir: Path, split: str = "train") -> Any:
    """A split of the prepared data set as an MLflow dataset: its folder as source, and as digest
    a hash of its data card (source checksums, config, counts), so runs on the same data share
    it; named ``<data set> <scenario>`` (``train``) or ``<data set> <scenario> <split>``."""
    import hashlib
    import warnings

    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    digest = hashlib.sha256(json.dumps(json_safe(dict(card)), sort_keys=True).encode()).hexdigest()[:16]
    dataset = card.get("source", {}).get("dataset", "data")
    name = f"{dataset} {card.get('scenario', '')}".strip() + ("" if split == "train" else f" {split}")
    with warnings.catch_warnings():  # MLflow 3.17 registers the local source twice and says so
        warnings.simplefilter("ignore", UserWarning)
        source = resolve_dataset_source(str(data_dir.resolve()))  # a LocalArtifactDatasetSource
    return MetaDataset(source, name=name, digest=digest)


CONTEXTS = {"train": "training", "val": "validation"}  # MLflow input context of a split (else "testing")


def log_dataset(card: Mapping[str, Any], data_dir: Path) -> None:
    """The prepared training data as the run's MLflow input (context ``training``)."""
    mlflow.log_input(prepared_dataset(card, data_dir), context="training")
