"""The scenario registry: a scenario that only registers its record (as a data module does) is
parsed, built, evaluated, selected on, reported and named by every place that reads scenarios,
and the four built-in scenarios keep their records."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from fixtures import data_config

from pipeline.data.build import build_from_source
from pipeline.data.prepared import PreparedData, Split
from pipeline.data.scenarios import SCENARIOS, Metrics, Scenario, register
from pipeline.data.sources import Source
from pipeline.evaluation.evaluate import headline
from pipeline.params.experiment import apply_values, run_params
from pipeline.params.file import load_params
from pipeline.params.schema import ParamError, bounded, to_dict
from pipeline.report import tables
from pipeline.report.summary import summarise
from tests.reference.test_reference_report import labels_of, record


@dataclass
class ToyParams:
    size: int = bounded(3, ge=1)


def toy_build(source: Source, cfg) -> PreparedData:
    """Every split is the first ``data.toy.size`` training images."""
    split = source.take("train", np.arange(cfg.toy.size))
    return PreparedData({name: split for name in ("train", "meta", "val", "test")},
                        {"num_classes": source.num_classes, "toy": {"size": cfg.toy.size}})


def toy_headline(metrics: Metrics) -> dict[str, float]:
    return {"toy_acc": metrics["test"]["acc"]}


TOY = Scenario(name="toy", params=ToyParams, build=toy_build, streams={"toy/none": "draws nothing"},
               primary="toy_acc", mlflow_experiment="toy-shift", selection_metric="val_toy_acc",
               headline=toy_headline, note="`toy_acc`: the toy scenario's accuracy.")


@pytest.fixture
def toy(monkeypatch):
    monkeypatch.setitem(SCENARIOS, "toy", TOY)
    return TOY


def test_the_builtin_scenarios_are_registered_in_the_order_of_their_data_sections():
    assert list(SCENARIOS) == ["longtail", "noisy", "subpop", "glt"]
    assert {n: (s.selection_metric, s.primary) for n, s in SCENARIOS.items()} == {
        "longtail": ("val_acc", "acc"), "noisy": ("val_acc", "acc"),
        "subpop": ("val_worst_group_acc", "worst_group_acc"), "glt": ("val_acc", "glt_acc")}


def test_each_builtin_scenario_lives_in_one_module():
    """A new scenario is one data module: its parameters, builder, rules and record side by side."""
    for name, s in SCENARIOS.items():
        module = f"pipeline.data.{name}"
        assert (s.params.__module__, s.build.__module__) == (module, module), name
        assert s.check.__module__ in (module, "pipeline.data.scenarios"), name  # its own rule or the shared one


def test_a_scenario_is_registered_once():
    with pytest.raises(ValueError, match="'noisy' is registered twice"):
        register(SCENARIOS["noisy"])


def test_an_unregistered_scenario_is_refused_naming_the_registered_ones():
    with pytest.raises(ParamError, match="^experiments.test.data.scenario = 'toy' is not allowed: use one of "
                                         "'longtail', 'noisy', 'subpop', 'glt'$"):
        data_config(scenario="toy", source="cifar10")


def test_a_registered_scenario_is_parsed_with_its_own_section(toy):
    cfg = data_config(scenario="toy", source="cifar10", toy={"size": 5})
    assert cfg.toy == ToyParams(size=5) and cfg.noisy.rate == 0.4  # the others keep their defaults
    assert list(to_dict(cfg))[-5:] == ["longtail", "noisy", "subpop", "glt", "toy"]
    with pytest.raises(ParamError, match="^experiments.test.data.toy.size = 0 is out of range"):
        data_config(scenario="toy", source="cifar10", toy={"size": 0})
    with pytest.raises(ParamError, match="^unknown key experiments.test.data.toys: allowed keys are .*, glt, toy$"):
        data_config(scenario="toy", source="cifar10", toys={})


def test_a_registered_scenario_selects_names_and_logs_through_its_record(toy):
    lt = load_params().experiment("lt")
    exp = apply_values(to_dict(lt), {"data.scenario": "toy", "data.toy.size": 4}, "experiments.lt")
    assert exp.selection_metric == "val_toy_acc" and exp.mlflow_experiment == "toy-shift"
    logged = run_params(exp, exp.method_config("ce"))
    assert logged["data.toy.size"] == 4
    assert not [k for k in logged if k.startswith(("data.longtail.", "data.noisy.", "data.subpop.", "data.glt."))]


def test_a_registered_scenario_is_built_with_its_builder_and_streams(toy):
    x = np.zeros((6, 2, 2, 3), dtype=np.uint8)
    y = np.array([0, 1, 0, 1, 0, 1])
    source = Source("cifar10", x, y, np.arange(6), x, y, np.arange(6), ["a", "b"], {"dataset": "toy"})
    data = build_from_source(source, data_config(scenario="toy", source="cifar10", toy={"size": 4}))
    assert len(data.splits["train"]) == 4 and data.card["toy"] == {"size": 4}
    assert data.card["scenario"] == "toy" and data.card["seeds"]["streams"] == {"toy/none": "draws nothing"}


def test_a_registered_scenario_has_its_headline_primary_metric_and_page_note(toy):
    assert headline("toy", {"test": {"acc": 0.25}, "val": {"acc": 0.5}}) == {"toy_acc": 0.25}
    recs = []
    for label, acc in (("ce", 0.5), ("meta_iada", 0.6)):
        r = record(label, 0, acc, acc)
        r["scenario"] = "toy"
        for rule in ("selected", "final"):
            r[rule]["headline"] = {"toy_acc": acc, "acc": acc - 0.2}
        recs.append(r)
    s = summarise(labels_of(*recs), "meta_iada")
    assert s["primary"] == "toy_acc" and s["ranking"] == ["meta_iada", "ce"]
    s["data"] = "toy data"
    page = tables.experiment_markdown("exp", s, None, [])
    assert "`toy_acc`: the toy scenario's accuracy." in page and "Ranked by the selected toy_acc" in page
