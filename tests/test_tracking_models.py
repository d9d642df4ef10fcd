"""What a run looks like in MLflow: the chart sections put the curves read first first, and the
logged models (the classifier and the perturbation network) are linked to their metrics and
datasets, with described and tagged registered versions. A real pretrain, train and evaluate of
tiny data into a temporary SQLite store."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
import yaml

from pipeline.data.prepared import save_prepared
from pipeline.layout import data_dir
from pipeline.params.schema import to_dict
from pipeline.tracking_names import evaluation_metrics, metric_name
from tests.tiny import tiny_data, tiny_experiment

EXPERIMENT = "tiny_models"
HISTORY_KEYS = ["train_loss", "train_acc", "lr", "epoch_seconds", "train_img_per_s", "val_acc",
                "val_macro_precision", "eps_mean", "eps_std", "eps_adv_share", "meta_loss", "omega_norm",
                *(f"eps_class_mean/{c}" for c in range(10))]


def chart_sections(names: list[str]) -> list[str]:
    """The order of the sections of MLflow 3.17's chart tab (its RunsChartsCard logic): a section
    per prefix up to the last "/", prefixed sections sorted by name, then the un-prefixed metrics
    ("Model metrics"), then "system"."""
    prefixes = {n.rsplit("/", 1)[0] if "/" in n else "" for n in names}
    named = sorted(p for p in prefixes if p not in ("", "system"))
    return named + [p for p in ("", "system") if p in prefixes]


def test_the_curves_read_first_open_the_chart_tab_and_single_values_and_breakdowns_follow():
    result = {"final": {"epoch": 3, "test": {"acc": 0.5, "per_class_acc": {"0": 0.5}}, "headline": {"acc": 0.5}},
              "selected": {"epoch": 2, "test": {"acc": 0.6, "few_acc": float("nan")}, "val": {"acc": 0.7}},
              "epsilon": {"mean": 0.1, "per_class_mean": {"0": 0.1}}}
    singles = evaluation_metrics(result)
    assert singles == {"test/final/epoch": 3.0, "test/final/acc": 0.5, "test/selected/epoch": 2.0,
                       "test/selected/acc": 0.6, "val/selected/acc": 0.7, "epsilon/last/mean": 0.1}
    curves = [metric_name(k) for k in HISTORY_KEYS]
    assert len(set(curves)) == len(curves)
    assert metric_name("train_loss") == "curves/train/loss" and metric_name("val_acc") == "curves/val/acc"
    sections = chart_sections(curves + list(singles))
    assert sections[:2] == ["curves/train", "curves/val"]
    assert sections.index("epsilon") < sections.index("epsilon/class_mean") < sections.index("test/selected")
    assert sections[-1] == "system"


@pytest.fixture
def checkout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project root in tmp with tiny prepared data and a SQLite store."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    save_prepared(tiny_data(per_class=(24, 16, 12)), data_dir(EXPERIMENT))
    exp = {**to_dict(tiny_experiment()), "methods": {"ce": {}, "meta_iada": {}}}
    params = {"run": {"experiments": [EXPERIMENT], "methods": ["meta_iada"], "seeds": [0], "device": "cpu"},
              "experiments": {EXPERIMENT: exp}, "tune": {"studies": {}}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    return tmp_path


def test_the_logged_models_are_linked_to_their_metrics_and_datasets(checkout):
    from pipeline.stages import evaluate as evaluate_stage
    from pipeline.stages import pretrain as pretrain_stage
    from pipeline.stages import train as train_stage
    from pipeline.tracking import registered_model_name

    args = ["--experiment", EXPERIMENT, "--seed", "0"]
    assert pretrain_stage.main(args) == 0
    assert train_stage.main([*args, "--method", "meta_iada"]) == 0
    assert evaluate_stage.main([*args, "--method", "meta_iada"]) == 0

    client = mlflow.MlflowClient()
    exp_id = client.get_experiment_by_name("long-tail").experiment_id
    run = {r.info.run_name: r for r in client.search_runs([exp_id])}[f"{EXPERIMENT}-meta_iada-s0"]
    assert len(client.get_metric_history(run.info.run_id, "curves/val/acc")) == 2  # a curve: one per epoch
    assert [m.step for m in client.get_metric_history(run.info.run_id, "test/selected/acc")] == [0]  # logged once
    models = {m.name: m for m in client.search_logged_models([exp_id])
              if m.source_run_id == run.info.run_id}
    assert set(models) == {"classifier", "perturbation_net"}

    inputs = {d.dataset.name: {t.key: t.value for t in d.tags}["mlflow.data.context"]
              for d in client.get_run(run.info.run_id).inputs.dataset_inputs}
    base = "data"  # the tiny data card names no source or scenario
    assert inputs == {base: "training", f"{base} val": "validation", f"{base} test": "testing"}
    classifier = {m.key: m.dataset_name for m in client.get_logged_model(models["classifier"].model_id).metrics}
    assert classifier["test/selected/acc"] == f"{base} test" and classifier["val/selected/acc"] == f"{base} val"
    assert not [k for k in classifier if "/final/" in k]  # the final weights are not this model
    network = {m.key: m.dataset_name for m in client.get_logged_model(models["perturbation_net"].model_id).metrics}
    assert network["epsilon/last/mean"] == base and not [k for k in network if k.startswith(("test/", "val/"))]
    assert models["classifier"].params["method"] == "meta_iada"

    version = client.get_model_version(registered_model_name(EXPERIMENT), "1")
    assert version.run_id == run.info.run_id and f"{EXPERIMENT}-meta_iada-s0" in version.description
    assert {k: version.tags[k] for k in ("experiment", "method", "seed", "precision")} == {
        "experiment": EXPERIMENT, "method": "meta_iada", "seed": "0", "precision": "fp32"}
    net = mlflow.pytorch.load_model(models["classifier"].model_uri)
    assert type(net).__name__ == "CifarResNet"
