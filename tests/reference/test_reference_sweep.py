"""The reference sweep on tiny real data: one metrics file per run, one split per seed, a rerun
that trains nothing, a changed hyperparameter that reruns only its runs, a stopped sweep that
continues, and the reference section of params.yaml checked before any work."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline.data.prepared import load_prepared
from pipeline.engine.build import EMULATED_BF16_ENV
from pipeline.params.file import load_params, parse_params
from pipeline.params.schema import ParamError
from pipeline.reference import sweep

ROOT = Path(__file__).resolve().parents[2]
TINY_DATA = {"scenario": "longtail", "source": "cifar10", "meta_per_class": 3, "val_per_class": 4,
             "limit_per_class": 40, "test_limit_per_class": 15, "longtail": {"imbalance_ratio": 10}}


def raw_params(reference: dict | None = None) -> dict:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    lt = params["experiments"]["lt"]
    lt.update(data=dict(TINY_DATA), pretrain_epochs=2, train_epochs=1, meta_batch_size=10, eval_batch_size=100)
    lt["optim"].update(batch_size=16, warmup_epochs=1, milestones=[2])
    params.update(experiments={"tiny": lt}, tune={"run": [], "studies": {}},
                  run={"experiments": ["tiny"], "methods": ["ce"], "seeds": [0], "device": "cpu"})
    params["reference"] = reference if reference is not None else {
        "seeds": [0, 1], "experiments": {"tiny": {"methods": ["ce", "meta_iada"],
                                                  "variants": {"ce-scratch": {"method": "ce",
                                                                              "set": {"protocol": "scratch"}}}}}}
    return params


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """The tiny sweep, run once in a folder of its own (without MLflow)."""
    folder = tmp_path_factory.mktemp("sweep")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        params = parse_params(raw_params())
        sweep.run(params, sweep.plan(params), device="cpu", track=False)
    return folder


def test_one_metrics_file_per_run_with_its_identity_and_curve(swept, monkeypatch):
    monkeypatch.chdir(swept)
    files = sorted(p.name for p in Path("reference/metrics/tiny").glob("*.json"))
    assert files == ["ce-s0.json", "ce-s1.json", "ce-scratch-s0.json", "ce-scratch-s1.json",
                     "meta_iada-s0.json", "meta_iada-s1.json"]
    r = json.loads(Path("reference/metrics/tiny/ce-scratch-s1.json").read_text())
    assert (r["label"], r["method"], r["seed"], r["split_seed"]) == ("ce-scratch", "ce", 1, 1)
    assert r["protocol"] == "scratch" and r["changed"] == {"protocol": "scratch"}
    assert r["curve"]["epoch"] == [0, 1, 2]  # the whole schedule from a random init
    deferred = json.loads(Path("reference/metrics/tiny/meta_iada-s1.json").read_text())
    assert deferred["protocol"] == "deferred" and deferred["curve"]["epoch"] == [2]
    assert "epsilon" in deferred and sum(deferred["train_class_counts"]) > 0
    assert {"final", "selected"} <= set(r) and r["machine"]["threads"] >= 1


def test_each_seed_draws_its_own_split(swept, monkeypatch):
    monkeypatch.chdir(swept)
    s0 = load_prepared("data/prepared/reference/tiny/split0").splits["train"].index
    s1 = load_prepared("data/prepared/reference/tiny/split1").splits["train"].index
    assert not np.array_equal(np.sort(s0), np.sort(s1))
    assert Path("models/reference/tiny/s1/pretrain/last.pt").is_file()


def test_a_rerun_trains_nothing_and_a_changed_hyperparameter_reruns_only_its_runs(swept, monkeypatch):
    monkeypatch.chdir(swept)
    params = parse_params(raw_params())
    assert all(job.done() for job in sweep.plan(params))
    monkeypatch.setattr(sweep, "run_job", lambda *a, **k: pytest.fail("a finished run was trained again"))
    sweep.run(params, sweep.plan(params), device="cpu", track=False)
    changed = raw_params()
    changed["experiments"]["tiny"].setdefault("methods", {})["meta_iada"] = {"alpha": 0.25}
    todo = [(j.label, j.seed) for j in sweep.plan(parse_params(changed)) if not j.done()]
    assert todo == [("meta_iada", 0), ("meta_iada", 1)]


def test_a_stopped_sweep_continues_where_it_stopped(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    params = parse_params(raw_params({"seeds": [0], "experiments": {"tiny": {"methods": ["ce", "meta_iada"]}}}))
    real = sweep.run_job
    calls = []

    def stop_at_the_second(job, **kw):
        calls.append(job.label)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(job, **kw)

    monkeypatch.setattr(sweep, "run_job", stop_at_the_second)
    with pytest.raises(KeyboardInterrupt):
        sweep.run(params, sweep.plan(params), device="cpu", track=False)
    first = Path("reference/metrics/tiny/ce-s0.json")
    stamp = first.stat().st_mtime_ns
    assert not Path("reference/metrics/tiny/meta_iada-s0.json").exists()
    monkeypatch.setattr(sweep, "run_job", real)
    sweep.run(params, sweep.plan(params), device="cpu", track=False)
    assert Path("reference/metrics/tiny/meta_iada-s0.json").is_file() and first.stat().st_mtime_ns == stamp


def test_a_profile_without_pretraining_runs_every_method_from_one_shared_init(tmp_path, monkeypatch):
    # noisy_ref's shape: pretrain_epochs 0 with the deferred protocol (the DVC pipeline's pretrain
    # stage then writes the seed's random initialisation, from which every method starts).
    monkeypatch.chdir(tmp_path)
    raw = raw_params({"seeds": [0], "experiments": {"tiny": {"methods": ["ce", "meta_iada"]}}})
    raw["experiments"]["tiny"].update(pretrain_epochs=0, train_epochs=2)
    raw["experiments"]["tiny"]["optim"]["milestones"] = [1]
    params = parse_params(raw)
    sweep.run(params, sweep.plan(params), device="cpu", track=False)
    for label in ("ce", "meta_iada"):
        r = json.loads(Path(f"reference/metrics/tiny/{label}-s0.json").read_text())
        assert r["curve"]["epoch"] == [0, 1]  # the whole schedule (recorded as "scratch": no CE epochs)


def test_a_variant_that_changes_the_pretraining_gets_its_own(tmp_path, monkeypatch):
    """A deferred variant that changes what the CE pretraining depends on (the network's
    precision, the pretraining's length) starts from a pretraining of its own configuration, not
    from the base one's (which it would otherwise record as if it had been its own); a variant
    that changes only its method shares the base pretraining."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(EMULATED_BF16_ENV, "1")  # tiny networks: emulated bf16 costs nothing here
    params = parse_params(raw_params({"seeds": [0], "experiments": {"tiny": {
        "methods": ["ce", "meta_iada"],
        "variants": {"ce-bf16": {"method": "ce", "set": {"network.precision": "bf16"}},
                     "ce-long": {"method": "ce", "set": {"pretrain_epochs": 3, "optim.milestones": [3]}},
                     "meta_iada-wd0": {"method": "meta_iada",
                                       "set": {"methods.meta_iada.perturbation_weight_decay": 0.0}}}}}}))
    jobs = {j.label: j for j in sweep.plan(params)}
    base = jobs["ce"].exp
    labels = {name: job.pretrain_label(base) for name, job in jobs.items()}
    assert labels["ce"] == labels["meta_iada"] == labels["meta_iada-wd0"] == "pretrain"
    assert labels["ce-bf16"].startswith("pretrain-") and labels["ce-long"].startswith("pretrain-")
    assert labels["ce-bf16"] != labels["ce-long"]
    sweep.run(params, [jobs["ce-bf16"], jobs["ce-long"]], device="cpu", track=False)
    models = Path("models/reference/tiny/s0")
    assert not (models / "pretrain").exists()  # no job of this call needed the base one
    for label, epochs in (("ce-bf16", 2), ("ce-long", 3)):
        pre = json.loads((models / labels[label] / "history.json").read_text())
        assert pre["last_epoch"] == epochs
        r = json.loads(Path(f"reference/metrics/tiny/{label}-s0.json").read_text())
        assert r["curve"]["epoch"] == [epochs]  # the method's epoch right after its own pretraining
    assert json.loads(Path("reference/metrics/tiny/ce-bf16-s0.json").read_text())["precision"] == "bf16"


def test_a_bf16_job_on_a_device_without_bf16_stops_the_sweep_before_anything_is_prepared(tmp_path, monkeypatch):
    from pipeline.engine import build as engine_build

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(EMULATED_BF16_ENV, raising=False)
    monkeypatch.setattr(engine_build, "native_bf16", lambda device: False)
    params = parse_params(raw_params({"seeds": [0], "experiments": {"tiny": {
        "methods": ["ce", "meta_iada"], "variants": {"ce-bf16": {"method": "ce", "set": {"network.precision": "bf16"}}}}}}))
    with pytest.raises(ParamError, match="no native bfloat16"):
        sweep.run(params, sweep.plan(params), device="cpu", track=False)
    assert not Path("data").exists() and not Path("models").exists()  # the fp32 job's split was not prepared either


@pytest.mark.parametrize("reference, message", [
    ({"experiments": {"nope": {"methods": ["ce"]}}}, "reference.experiments.nope: experiment 'nope' is not declared"),
    ({"experiments": {"tiny": {"methods": ["ce", "ce", "meta_iada"]}}}, "repeats 'ce'"),
    ({"experiments": {"tiny": {"methods": ["ce", "meta_iada"], "variants": {"ce": {"method": "ce"}}}}},
     "variants.ce: a label must be new"),
    ({"experiments": {"tiny": {"methods": ["meta_iada"], "variants": {"meta_iada-x\n": {"method": "meta_iada"}}}}},
     "a label must be new"),  # a trailing newline: a file name and a table row that break
    ({"experiments": {"tiny": {"methods": ["meta_iada"],
                               "variants": {"x-y": {"method": "meta_iada", "set": {"methods.meta_iada.nope": 1}}}}}},
     "'methods.meta_iada.nope' is not a key of experiments.tiny"),
    ({"experiments": {"tiny": {"methods": ["meta_iada"],
                               "variants": {"x-y": {"method": "meta_iada", "set": {"data.seed": 3}}}}}},
     "cannot change in a variant"),
    ({"experiments": {"tiny": {"methods": ["meta_iada"],
                               "variants": {"x-y": {"method": "meta_iada", "set": {"protocol": "later"}}}}}},
     "protocol = 'later' is not allowed"),
    ({"experiments": {"tiny": {"methods": ["ce", "la"]}}}, "does not run reference.subject = 'meta_iada'"),
    ({"seeds": [0, 0]}, "reference.seeds = [0, 0]"),
    ({"seeds": [0, 1], "experiments": {"tiny": {"methods": ["meta_iada"],
                                                "variants": {"x-y": {"method": "meta_iada", "seeds": [2]}}}}},
     "variants.x-y.seeds = [2]: list some of reference.seeds [0, 1]"),
])
def test_a_wrong_reference_section_stops_with_one_error_naming_the_key(reference, message):
    with pytest.raises(ParamError, match=None) as err:
        parse_params(raw_params(reference))
    assert message in str(err.value)


def test_a_variant_with_its_own_seeds_runs_only_those():
    params = parse_params(raw_params({"seeds": [0, 1, 2], "experiments": {"tiny": {
        "methods": ["meta_iada"], "variants": {"meta_iada-scratch": {"method": "meta_iada", "seeds": [1],
                                                                     "set": {"protocol": "scratch"}}}}}}))
    assert [(j.label, j.seed) for j in sweep.plan(params)] == [
        ("meta_iada", 0), ("meta_iada", 1), ("meta_iada-scratch", 1), ("meta_iada", 2)]


def test_unknown_names_on_the_command_line_are_refused_before_any_work():
    params = parse_params(raw_params())
    with pytest.raises(ParamError, match="--experiment 'lt'"):
        sweep.plan(params, ["lt"])
    with pytest.raises(ParamError, match="--label 'la' is not a run"):
        sweep.plan(params, None, None, ["la"])


def test_the_committed_reference_metrics_are_those_of_the_current_params():
    """A committed metrics file whose run configuration no longer matches params.yaml is stale:
    rerun the sweep (it reruns exactly those runs) or restore the params."""
    params = load_params(ROOT / "params.yaml")
    import os

    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        stale = [str(j.metrics_file) for j in sweep.plan(params) if j.metrics_file.is_file() and not j.done()]
    finally:
        os.chdir(cwd)
    assert not stale


def test_the_plateau_check_runs_the_schedule_and_its_double(tmp_path, monkeypatch):
    """python -m pipeline.stages.plateau: CE over the experiment's schedule and over twice it (epochs,
    milestones and LDAM-DRW's re-weighting epoch doubled), one file with both and their gap."""
    from pipeline.stages import plateau

    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw_params(), sort_keys=False))
    assert plateau.main(["--experiment", "tiny", "--seed", "1"]) == 0
    r = json.loads(Path("metrics/plateau/tiny-s1.json").read_text())
    assert r["x1"]["epochs"] == [2, 1] and r["x2"]["epochs"] == [4, 2]
    assert r["x1"]["milestones"] == [2] and r["x2"]["milestones"] == [4]
    assert r["split_seed"] == 1 and r["metric"] == "val_acc"
    assert r["gap_val_acc_points"] == pytest.approx(100 * (r["x2"]["val_acc"] - r["x1"]["val_acc"]))
    assert r["at_plateau"] == (abs(r["gap_val_acc_points"]) <= 1.0)
    assert Path("models/plateau/tiny/s1/x2/ce/last.pt").is_file()


@pytest.mark.parametrize("factor", [2, 4])
def test_the_plateau_schedules_move_ldam_drws_re_weighting_with_the_first_milestone(factor):
    """The doubled schedule's drw_epoch is factor x the experiment's: its first milestone x factor
    when derived (lt_ref: 96, doubled 192), the value set x factor when set (10 -> 10·factor)."""
    from pipeline.params.experiment import apply_values
    from pipeline.params.schema import to_dict
    from pipeline.report.plateau import doubled

    lt_ref = load_params(ROOT / "params.yaml").experiment("lt_ref")
    long = doubled(lt_ref, factor, data_seed=0)
    assert long.optim.milestones == [96 * factor, 104 * factor]
    assert long.method_config("ldam_drw").drw_epoch == 96 * factor == long.optim.milestones[0]
    set_ten = apply_values(to_dict(lt_ref), {"methods.ldam_drw.drw_epoch": 10}, "experiments.lt_ref")
    set_ten.name = "lt_ref"
    assert doubled(set_ten, factor, data_seed=0).method_config("ldam_drw").drw_epoch == 10 * factor


def test_the_plateau_ladder_doubles_until_a_schedule_is_within_a_point_of_its_double(tmp_path, monkeypatch):
    """--doublings n: schedules x1, x2, x4, ... compared pairwise, stopping at the first pair within 1
    point; plateau_factor is the shorter schedule of that pair (CE's validation accuracy at the end
    of each schedule stands in for training: 50 %, 60 %, 60.5 %, 90 % for x1, x2, x4, x8)."""
    from pipeline.engine import loop
    from pipeline.stages import plateau

    final_val_acc = {1: 0.50, 2: 0.60, 4: 0.605, 8: 0.90}
    trained: list[tuple[int, int, int]] = []

    def fake_fit(spec, *args, **kwargs):
        factor = int(spec.out_dir.parent.name.removeprefix("x"))
        trained.append((factor, spec.first_epoch, spec.last_epoch))
        return {"history": [{"epoch": spec.last_epoch - 1, "val_acc": final_val_acc[factor]}]}

    monkeypatch.setattr(loop, "fit", fake_fit)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw_params(), sort_keys=False))
    assert plateau.main(["--experiment", "tiny", "--doublings", "3"]) == 0
    r = json.loads(Path("metrics/plateau/tiny-s0.json").read_text())
    # x8 is never trained: x2 is within 1 point of x4
    assert sorted({f for f, _, _ in trained}) == [1, 2, 4] and "x8" not in r
    assert (4, 0, 8) in trained and (4, 8, 12) in trained  # pretraining 2x4, then the method phase 1x4
    assert [p["factors"] for p in r["pairs"]] == [[1, 2], [2, 4]]
    assert [p["at_plateau"] for p in r["pairs"]] == [False, True]
    assert r["pairs"][1]["gap_val_acc_points"] == pytest.approx(0.5)
    assert r["plateau_factor"] == 2
    # the profile's own verdict stays that of x1 against x2
    assert r["at_plateau"] is False and r["gap_val_acc_points"] == pytest.approx(10.0)
    assert r["x4"]["epochs"] == [8, 4] and r["x4"]["milestones"] == [8]


def test_the_plateau_ladder_without_a_plateau_says_none(tmp_path, monkeypatch):
    from pipeline.engine import loop
    from pipeline.stages import plateau

    monkeypatch.setattr(loop, "fit", lambda spec, *a, **k: {"history": [
        {"val_acc": 0.1 * int(spec.out_dir.parent.name.removeprefix("x"))}]})
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw_params(), sort_keys=False))
    assert plateau.main(["--experiment", "tiny", "--doublings", "2"]) == 0
    r = json.loads(Path("metrics/plateau/tiny-s0.json").read_text())
    assert [p["factors"] for p in r["pairs"]] == [[1, 2], [2, 4]] and r["plateau_factor"] is None
    with pytest.raises(SystemExit):
        plateau.main(["--experiment", "tiny", "--doublings", "0"])
