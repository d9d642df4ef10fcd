"""params.yaml validation: every user mistake stops before any work with one message naming the key."""

import copy
import functools
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.params.schema import ParamError
from pipeline.params.file import load_params, parse_params

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def raw():
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def test_the_committed_params_are_valid(raw):
    params = parse_params(raw)
    assert params.run.experiments and all(e in params.experiments for e in params.run.experiments)
    lt = params.experiment("lt")
    assert lt.data.scenario == "longtail" and lt.selection_metric == "val_acc"
    assert params.experiment("lt_paper").network.arch == "resnet32"
    assert params.experiment("lt_paper").total_epochs == 200


def mutate(raw, path, value):
    bad = copy.deepcopy(raw)
    node = bad
    *parents, leaf = path.split(".")
    for p in parents:
        node = node[p]
    node[leaf] = value
    return bad


@pytest.mark.parametrize("path, value, expect", [
    ("experiments.lt.data.longtail.imbalance_ratio", 0.5, "imbalance_ratio"),
    ("experiments.lt.data.source", "imagenet", "source"),
    ("experiments.lt.optim.lr", -0.1, "optim.lr"),
    ("experiments.lt.network.arch", "vgg", "network.arch"),
    ("experiments.lt.methods.meta_iada.alpha", "big", "methods.meta_iada.alpha"),
    ("experiments.lt.pretrain_epochs", -1, "pretrain_epochs"),
    ("run.methods", ["ce", "mixup"], "run.methods"),
    ("run.experiments", ["nope"], "run.experiments"),
    ("experiments.lt.methods.meta_iada.beta", -1.0, "experiments.lt.methods.meta_iada.beta"),
    ("experiments.lt.methods.meta_iada.beta", 0.0, r"^experiments\.lt\.methods\.meta_iada\.beta = 0 makes the meta"),
    ("experiments.lt.methods.meta_iada.characteristics", ["loss", "nope"],
     r"^experiments\.lt\.methods\.meta_iada\.characteristics"),
    ("run.seeds", [0, 0], r"run.seeds = \[0, 0\] repeats 0"),
    ("run.seeds", [-1], "seed -1 is negative"),
    ("run.methods", [], "run.methods is empty"),
    ("run.experiments", ["lt", "lt"], "run.experiments = .* repeats 'lt'"),
    ("experiments.lt.optim.milestones", [16, 25], "experiments.lt.optim.milestones = .* 25 is outside the schedule"),
    ("experiments.lt.optim.milestones", [18, 16], "must be strictly increasing"),
    ("experiments.lt.optim.warmup_epochs", 21, "experiments.lt.optim.warmup_epochs = 21 is longer"),
])
def test_bad_values_name_the_key(raw, path, value, expect):
    with pytest.raises(ParamError, match=expect):  # a regular expression
        parse_params(mutate(raw, path, value))


@pytest.mark.parametrize("keys", [
    ("experiments", "lt", "optim", "lr"), ("experiments", "lt", "data", "longtail", "imbalance_ratio"),
    ("experiments", "lt", "methods", "meta_iada", "alpha"),  # plain data until its method builds it
    ("experiments", "lt", "search", "optim.lr", "high"),
    ("experiments", "subpop_ref", "data", "subpop", "environments", 1),
])
@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
def test_a_number_that_is_not_finite_is_refused_naming_the_key(raw, keys, value):
    """YAML's .inf and .nan are floats: NaN passes every bound written as a comparison, +inf every
    lower bound (optim.lr: .inf, imbalance_ratio: .inf)."""
    bad = copy.deepcopy(raw)
    node = bad
    for key in keys[:-1]:
        node = node[key]
    node[keys[-1]] = value
    where = ".".join(map(str, keys[:-1])) + (f"[{keys[-1]}]" if isinstance(keys[-1], int) else f".{keys[-1]}")
    with pytest.raises(ParamError, match=rf"^{re.escape(where)} = .* is not a finite number"):
        parse_params(bad)


@pytest.mark.parametrize("path", ["experiments.lt.optim.learning_rate", "experiments.lt.data.rho",
                                  "experiments.lt.methods.meta_iada.gamma", "bogus"])
def test_unknown_keys_are_rejected_with_the_allowed_ones(raw, path):
    with pytest.raises(ParamError, match=r"unknown (top-level )?key") as err:
        parse_params(mutate(raw, path, 1))
    assert "allowed" in str(err.value)


def test_unknown_method_block(raw):
    with pytest.raises(ParamError, match=r"unknown method experiments\.lt\.methods\.mixup"):
        parse_params(mutate(raw, "experiments.lt.methods.mixup", {}))


def test_stage_reports_a_bad_param_in_one_line_before_any_work(tmp_path, raw):
    bad = mutate(raw, "experiments.lt.data.longtail.imbalance_ratio", 0.5)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(bad))
    proc = subprocess.run([sys.executable, "-m", "pipeline.stages.prepare", "--experiment", "lt",
                           "--params", str(params), "--no-mlflow"], cwd=tmp_path, capture_output=True, text=True,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "imbalance_ratio" in lines[0]
    assert not (tmp_path / "data").exists()  # nothing written


UNSAFE_NAMES = ["../../../../escaped", "a/b", "lt\n", "Lt", "lt.x", "", "-lt"]


@pytest.mark.parametrize("name", UNSAFE_NAMES)
def test_an_experiment_or_study_name_that_is_not_a_safe_folder_name_is_refused(raw, name):
    """Names become folders (data/prepared/<name>, studies/<name>) and segments of DVC's dotted keys."""
    bad = copy.deepcopy(raw)
    bad["experiments"][name] = bad["experiments"]["lt"]
    with pytest.raises(ParamError, match=rf"^experiment name {re.escape(repr(name))} is not a valid name"):
        parse_params(bad)
    bad = copy.deepcopy(raw)
    bad["tune"]["studies"][name] = bad["tune"]["studies"]["lt_smoke"]
    with pytest.raises(ParamError, match=rf"^study name {re.escape(repr(name))} is not a valid name"):
        parse_params(bad)


@pytest.mark.parametrize("name", ["../lt", "lt\n"])
def test_a_command_line_name_that_is_not_a_safe_folder_name_is_refused(raw, name):
    from pipeline.params.tune import make_plan

    params = parse_params(raw)
    with pytest.raises(ParamError, match=rf"^experiment {re.escape(repr(name))} is not a valid name"):
        params.experiment(name)
    with pytest.raises(ParamError, match=rf"^study {re.escape(repr(name))} is not a valid name"):
        make_plan(params, name)


def test_an_experiment_named_like_a_path_writes_nothing_outside_the_working_copy(tmp_path, raw):
    """``prepare --experiment ../../../../escaped`` with a matching params entry: one line, exit 2,
    no data/prepared/../../../../escaped."""
    name = "../../../../escaped"
    bad = copy.deepcopy(raw)
    bad["experiments"][name] = copy.deepcopy(raw["experiments"]["lt"])  # (safe_dump would write an anchor)
    work = tmp_path / "a" / "b" / "work"  # data/prepared/<name> would be tmp_path/a/escaped
    work.mkdir(parents=True)
    (work / "params.yaml").write_text(yaml.safe_dump(bad))
    proc = subprocess.run([sys.executable, "-m", "pipeline.stages.prepare", "--experiment", name, "--no-mlflow"],
                          cwd=work, capture_output=True, text=True, timeout=600,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "is not a valid name" in lines[0], proc.stderr
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == [
        "a", "a/b", "a/b/work", "a/b/work/params.yaml"]


def test_the_committed_params_use_no_yaml_aliases():
    load_params(ROOT / "params.yaml")  # raises on an anchor, alias or merge key


@pytest.mark.parametrize("text, expect", [
    ("base: &b {lr: 0.1}\nother: {x: 1}\n", r"line 1: YAML anchor &b"),
    ("a: {x: 1}\nb: *a\n", r"line 2: YAML alias \*a"),
    ("b:\n  <<: {lr: 0.1}\n  x: 1\n", r"line 2: YAML merge key <<"),
])
def test_yaml_aliases_anchors_and_merges_are_rejected(tmp_path, text, expect):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(ParamError, match=expect):
        load_params(path)


def test_a_key_given_twice_in_one_block_is_rejected_with_its_lines(tmp_path):
    # PyYAML keeps the second silently; DVC refuses the file (every dvc exp run would fail).
    path = tmp_path / "params.yaml"
    path.write_text("run: {seeds: [0]}\nexperiments:\n  lt: {}\n  lt:\n    optim: {}\n")
    with pytest.raises(ParamError,
                       match=r"params.yaml line 4: key 'lt' is given twice in one block \(first at line 3\)"):
        load_params(path)


def test_a_run_method_without_a_block_in_a_run_experiment_is_rejected(raw):
    bad = mutate(raw, "run.methods", ["ce", "la"])
    del bad["experiments"]["lt"]["methods"]["la"]
    del bad["reference"]["experiments"]["lt"]  # the precision-parity sweep of lt would refuse it first
    with pytest.raises(ParamError, match=r"experiments\.lt\.methods has no block for method 'la'"):
        parse_params(bad)


# One key per experiment, including every kind that used to be reached through a YAML alias
# (methods: *methods) or merge (<<: *lt): DVC's writer dropped those silently.
OVERRIDES = {
    "experiments.lt.methods.meta_iada.alpha": 0.25,
    "experiments.lt.methods.meta_iada.meta_scope": "head",
    "experiments.lt.optim.lr": 0.05,
    "experiments.lt_paper.data.longtail.imbalance_ratio": 50,
    "experiments.lt_paper.methods.meta_iada.perturbation_lr": 0.003,
    "experiments.lt_paper.optim.warmup_epochs": 3,
    "experiments.noisy.methods.meta_iada.meta_interval": 2,
    "experiments.noisy_paper.methods.la.tau": 0.5,
    "experiments.subpop.methods.iada.epsilon": -0.2,
    "experiments.subpop_cifar.optim.lr": 0.02,
    "experiments.subpop_irm.data.subpop.test_correlation": 0.2,
    "experiments.subpop_paper.methods.isda.alpha": 0.75,
    "experiments.glt.methods.meta_iada.direction": "gradient",
    "experiments.glt_paper.pretrain_epochs": 150,
    "experiments.noisy_ref.methods.ldam_drw.drw_epoch": 12,  # an empty (derived) value in params.yaml
}


def get(node, dotted):
    for part in dotted.split("."):
        node = node[part]
    return node


def test_dvc_exp_run_set_param_lands_in_the_queued_params_for_every_experiment(tmp_path):
    """The way a user runs a variant: ``dvc exp run --queue -S key=value``, then the queued
    commit's params.yaml must hold the value (and still pass validation)."""
    dvc = Path(sys.executable).parent / "dvc"
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    env.pop("DVC_ROOT", None)
    run = functools.partial(subprocess.run, cwd=tmp_path, env=env, capture_output=True, text=True)
    shutil.copy(ROOT / "params.yaml", tmp_path)
    shutil.copy(ROOT / "dvc.yaml", tmp_path)
    for cmd in (["git", "init", "-q"], [str(dvc), "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "p"]):
        assert run(cmd).returncode == 0
    sets = [a for k, v in OVERRIDES.items() for a in ("-S", f"{k}={v}")]
    proc = run([str(dvc), "exp", "run", "--queue", *sets])
    assert proc.returncode == 0, proc.stderr
    stash = run(["git", "for-each-ref", "--format=%(objectname)", "refs/exps/celery/stash"]).stdout.split()
    assert len(stash) == 1
    queued_text = run(["git", "show", f"{stash[0]}:params.yaml"]).stdout
    queued = yaml.safe_load(queued_text)
    for key, value in OVERRIDES.items():
        assert get(queued, key) == value, key
    (tmp_path / "queued.yaml").write_text(queued_text)
    params = load_params(tmp_path / "queued.yaml")
    assert params.experiment("lt").method_config("meta_iada").alpha == 0.25
    assert params.experiment("noisy_ref").method_config("ldam_drw").drw_epoch == 12  # set: wins over milestone 20
    assert params.experiment("lt_paper").data.longtail.imbalance_ratio == 50
    assert params.experiment("lt").data.longtail.imbalance_ratio == 100  # the others keep theirs
    # A key that does not exist is refused by DVC itself (nothing queued), never dropped.
    proc = run([str(dvc), "exp", "run", "--queue", "-S", "experiments.lt.methods.meta_iada.alpah=0.25"])
    assert proc.returncode != 0 and "alpah" in proc.stderr + proc.stdout


def test_every_searched_key_exists_so_the_printed_apply_line_lands(raw):
    """``pipeline.tuning.study`` prints ``dvc exp run -S 'experiments.<exp>.<key>=<best>'``: DVC refuses a
    key that is not in params.yaml, and before this layout dropped keys reached through aliases."""
    searched = [(name, key) for name, exp in raw["experiments"].items() for key in exp.get("search", {})]
    assert searched
    for name, key in searched:
        get(raw["experiments"][name], key)  # KeyError if the key is not written out


@pytest.mark.parametrize("name", ["isda", "iada", "meta_iada", "metasaug"])
def test_a_switch_added_at_its_default_keeps_the_config_hash_of_recorded_runs(name):
    """``cb_epoch`` was added after the reference runs were recorded: at its default (0, what those
    runs did) the method's config hash is the hash of the config without it, so their metrics stay
    current and their checkpoints resume; another value changes the hash. It is a logged param
    all the same."""
    import dataclasses

    from pipeline.methods import REGISTRY
    from pipeline.params.experiment import config_hash
    from pipeline.params.schema import build, to_dict

    cfg = build(REGISTRY[name].Config, {"alpha": 0.3}, f"methods.{name}")
    added = {f.name for f in dataclasses.fields(cfg) if f.metadata.get("added")}  # cb_epoch and later switches
    assert "cb_epoch" in added
    before = {k: v for k, v in to_dict(cfg).items() if k not in added}
    assert to_dict(cfg)["cb_epoch"] == 0
    assert config_hash(cfg, 7) == config_hash(before, 7)
    assert config_hash(dataclasses.replace(cfg, cb_epoch=96), 7) != config_hash(cfg, 7)
    assert config_hash(dataclasses.replace(cfg, alpha=0.25), 7) != config_hash(cfg, 7)  # others count


# ----------------------------------------------------------------------------- LDAM-DRW's drw_epoch


def test_every_ldam_drw_of_params_yaml_starts_re_weighting_at_its_first_lr_milestone(raw):
    """LDAM-DRW's DRW starts at the first lr step (cifar_train.py:201 idx = epoch // 160 with the
    lr x0.01 from epoch 160, cifar_train.py:368-374): no experiment writes drw_epoch by hand (an
    empty key, so that -S can still set it), and each resolves it to its own first milestone."""
    params = parse_params(raw)
    blocks = {name: e for name, e in params.experiments.items() if "ldam_drw" in e.methods}
    assert {"lt_ref", "glt_ref", "noisy_ref", "subpop_ref", "lt_paper"} <= set(blocks)
    for name, exp in blocks.items():
        assert "drw_epoch" in raw["experiments"][name]["methods"]["ldam_drw"], name
        assert raw["experiments"][name]["methods"]["ldam_drw"]["drw_epoch"] is None, name
        assert exp.method_config("ldam_drw").drw_epoch == exp.optim.milestones[0], name
    assert params.experiment("noisy_ref").method_config("ldam_drw").drw_epoch == 20  # was 7 by hand
    assert params.experiment("subpop_ref").method_config("ldam_drw").drw_epoch == 20  # was 6 by hand


def test_drw_epoch_set_wins_derived_follows_the_milestones_and_every_consumer_sees_the_integer(raw):
    """Set: its value. Derived: the first milestone of the experiment as built, so a variant that
    moves the milestones moves it; no milestone: 0. The run's MLflow params and the configuration
    hash (the reference sweep's and the resume fingerprint's) see the integer: derived 96 on
    lt_ref hashes as the 96 the committed runs were recorded with."""
    from pipeline.methods.longtail import LDAMDRWConfig
    from pipeline.params.experiment import apply_values, config_hash, run_params
    from pipeline.params.schema import build, to_dict

    lt_ref = parse_params(raw).experiment("lt_ref")
    base = to_dict(lt_ref)
    where = "experiments.lt_ref"
    assert lt_ref.methods["ldam_drw"].drw_epoch is None  # the block as written
    assert apply_values(base, {"methods.ldam_drw.drw_epoch": 3}, where).method_config("ldam_drw").drw_epoch == 3
    moved = apply_values(base, {"optim.milestones": [50, 104]}, where)
    assert moved.method_config("ldam_drw").drw_epoch == 50
    assert apply_values(base, {"optim.milestones": []}, where).method_config("ldam_drw").drw_epoch == 0
    without_block = apply_values({**base, "methods": {}}, {}, where)  # the code defaults resolve too
    assert without_block.method_config("ldam_drw").drw_epoch == 96

    resolved = lt_ref.method_config("ldam_drw")
    assert run_params(lt_ref, resolved)["method.drw_epoch"] == 96
    written = build(LDAMDRWConfig, {"max_m": 0.5, "s": 30.0, "drw_epoch": 96, "drw_beta": 0.9999}, "m")
    assert config_hash(resolved) == config_hash(written)
    assert config_hash(moved.method_config("ldam_drw")) != config_hash(written)
    with pytest.raises(ParamError, match=r"experiments.lt_ref.methods.ldam_drw.drw_epoch = -1 is out of range"):
        apply_values(base, {"methods.ldam_drw.drw_epoch": -1}, where)
