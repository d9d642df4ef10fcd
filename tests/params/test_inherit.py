"""Experiments as deltas of a base (pipeline.params.inherit): what an experiment inherits, what it
overrides, and the one-line errors for a bad delta, an unknown base and a cycle of bases."""

import copy
import json
from pathlib import Path

import pytest

from pipeline.layout import reference_metrics_file
from pipeline.params.file import load_params, parse_params, read_params
from pipeline.params.inherit import BASE, merge, resolve_experiments
from pipeline.params.schema import ParamError, flatten
from pipeline.reference.plan import plan

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def raw():
    return read_params(ROOT / "params.yaml")[0]


def test_merge_merges_mappings_and_replaces_everything_else():
    base = {"optim": {"lr": 0.1, "milestones": [16, 18]}, "subpop": {"environments": [0.9, 0.8]}}
    delta = {"optim": {"milestones": [96]}, "subpop": {"environments": None}}
    assert merge(base, delta) == {"optim": {"lr": 0.1, "milestones": [96]}, "subpop": {"environments": None}}
    assert base["optim"]["milestones"] == [16, 18]  # the base is not touched


def test_an_experiment_is_its_base_with_its_own_keys_changed(raw):
    bad = copy.deepcopy(raw)
    bad["experiments"]["lt"]["optim"]["lr"] = 0.07
    bad["methods"]["la"]["tau"] = 0.8
    params = parse_params(bad)
    lt, lt_ref, subpop_ref = (params.experiment(n) for n in ("lt", "lt_ref", "subpop_ref"))
    assert lt_ref.optim.lr == 0.07  # inherited from lt ...
    assert lt_ref.optim.milestones == [96, 104] and lt.optim.milestones == [16, 18]  # ... except what it writes
    assert subpop_ref.optim.lr == 0.05  # subpop (its base's base) writes its own
    assert {params.experiment(n).method_config("la").tau for n in params.experiments} == {0.8}  # the methods block
    assert lt_ref.search == {} and lt.search  # a search space is not inherited


def test_a_method_value_an_experiment_writes_reaches_it_and_its_heirs_only(raw):
    params = parse_params(raw)
    balanced = {n: e.method_config("meta_iada").class_balanced for n, e in params.experiments.items()}
    assert balanced["lt"] is balanced["lt_ref"] is balanced["glt_ref"] is True  # the methods block
    assert balanced["noisy"] is balanced["noisy_ref"] is balanced["noisy_paper"] is False  # noisy's own
    assert sorted(params.experiment("subpop_paper").methods) == sorted([*params.experiment("lt").methods,
                                                                        "groupdro", "jtt"])


def test_no_delta_repeats_what_its_base_already_gives(raw):
    """Each experiment states only what differs: no written leaf of a delta equals the value its
    base writes (itself or by inheritance); and no experiment writes a derived value, LDAM-DRW's
    drw_epoch, as the first lr milestone it is derived from."""
    params, resolved = parse_params(raw), resolve_experiments(raw["experiments"], raw["methods"])
    repeated = []
    for name, delta in raw["experiments"].items():
        drw = delta.get("methods", {}).get("ldam_drw", {}).get("drw_epoch")
        if drw is not None and drw == params.experiment(name).optim.milestones[0]:
            repeated.append(f"{name}.methods.ldam_drw.drw_epoch")
        if BASE in delta:
            base = flatten(resolved[delta[BASE]])
            repeated += [f"{name}.{k}" for k, v in flatten({k: v for k, v in delta.items() if k != BASE}).items()
                         if base.get(k, object()) == v]
    assert not repeated


def test_every_committed_reference_result_still_has_its_configuration(raw):
    """The reference sweep records each run's configuration hash (data, network, optim, schedule,
    method config, seed): resolving the deltas must give every committed run its hash back."""
    jobs = plan(parse_params(raw))
    recorded = [(j, json.loads(reference_metrics_file(j.exp.name, j.label, j.seed).read_text())) for j in jobs
                if reference_metrics_file(j.exp.name, j.label, j.seed).is_file()]
    assert len(recorded) >= 150  # every experiment with committed reference runs is covered
    assert {j.exp.name for j, _ in recorded} >= {"lt", "lt_ref", "noisy_ref", "subpop_ref", "glt_ref", "glt_alt_ref"}
    assert [f"{j.exp.name}/{j.label}-s{j.seed}" for j, r in recorded if r["config"] != j.config] == []


def edit(raw, dotted, value):
    bad = copy.deepcopy(raw)
    node = bad
    *parents, leaf = dotted.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value
    return bad


@pytest.mark.parametrize("dotted, value, expect", [
    ("experiments.lt_ref.optim.lrr", 0.1, r"^unknown key experiments\.lt_ref\.optim\.lrr: allowed keys are lr, "),
    ("experiments.lt_ref.methods.meta_iada.alfa", 0.1, r"^unknown key experiments\.lt_ref\.methods\.meta_iada\.alfa"),
    ("methods.meta_iada.alpha", "big", r"^methods\.meta_iada\.alpha = 'big' must be a number"),
    ("methods.mixup", {}, r"unknown method methods\.mixup"),
    ("experiments.lt_ref.base", "nope", r"^experiments\.lt_ref\.base = 'nope' is not an experiment: name one of lt, "),
    ("experiments.lt_ref.base", ["lt"], r"^experiments\.lt_ref\.base = \['lt'\] is not an experiment"),
    ("experiments.lt.base", "subpop_ref",
     r"^experiments\.subpop\.base = 'lt' closes a cycle of bases \(lt -> subpop_ref -> subpop_irm -> subpop -> lt\)"),
    ("experiments.lt.base", "lt", r"^experiments\.lt\.base = 'lt' closes a cycle of bases \(lt -> lt\)"),
])
def test_a_bad_delta_base_or_cycle_is_one_error_naming_the_key(raw, dotted, value, expect):
    with pytest.raises(ParamError, match=expect) as err:
        parse_params(edit(raw, dotted, value))
    assert "\n" not in str(err.value)


def test_a_mistake_in_a_base_is_named_in_the_base_not_in_an_heir_declared_before_it(raw):
    bad = edit(raw, "experiments.lt.optim.lr", -1.0)
    bad["experiments"] = {"lt_ref": bad["experiments"]["lt_ref"],  # the heir first in the file
                          **{k: v for k, v in bad["experiments"].items() if k != "lt_ref"}}
    with pytest.raises(ParamError, match=r"^experiments\.lt\.optim\.lr = -1\.0 is out of range"):
        parse_params(bad)
    assert list(parse_params({**raw, "experiments": bad["experiments"] | {"lt": raw["experiments"]["lt"]}}
                             ).experiments)[0] == "lt_ref"  # file order kept


def test_the_committed_params_load():
    assert load_params(ROOT / "params.yaml").experiment("noisy_ref").method_config("ldam_drw").drw_epoch == 20
