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

from pipeline.params.file import load_params, parse_params, read_params, set_option
from pipeline.params.schema import ParamError, to_dict
from pipeline.tuning.analysis import yaml_scalar

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def raw():
    return read_params(ROOT / "params.yaml")[0]


def test_the_committed_params_are_valid(raw):
    params = parse_params(raw)
    assert params.run.experiments and all(e in params.experiments for e in params.run.experiments)
    lt = params.experiment("lt")
    assert lt.data.scenario == "longtail" and lt.selection_metric == "val_acc"
    assert params.experiment("lt_paper").network.arch == "resnet32"
    assert params.experiment("lt_paper").total_epochs == 200



def test_lt100_paper_is_lt_paper_on_cifar100(raw):
    """Issue 31, item 6: the paper's CIFAR-100-LT rho=100 number needs lt_paper's protocol on
    CIFAR-100, and nothing else changed (schedule, network, carve-outs, method recipes)."""
    params = parse_params(raw)
    cifar10, cifar100 = to_dict(params.experiment("lt_paper")), to_dict(params.experiment("lt100_paper"))
    assert (cifar10["data"].pop("source"), cifar100["data"].pop("source")) == ("cifar10", "cifar100")
    assert cifar100 == cifar10 and cifar100["data"]["longtail"]["imbalance_ratio"] == 100

def mutate(raw, path, value):
    bad = copy.deepcopy(raw)
    node = bad
    *parents, leaf = path.split(".")
    for p in parents:
        node = node.setdefault(p, {})  # a key an experiment inherits: as -S '+key=value' writes it
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
    ("methods", "meta_iada", "alpha"),  # plain data until its method builds it
    ("tune", "search", "lt", "optim.lr", "high"),
    ("experiments", "subpop_irm", "data", "subpop", "environments", 1),
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
    bad = mutate(raw, "run.methods", ["ce", "groupdro"])  # only the subpopulation experiments add it
    with pytest.raises(ParamError, match=r"experiments\.lt\.methods has no block for method 'groupdro'"):
        parse_params(bad)
    parse_params(mutate(bad, "run.experiments", ["subpop"]))


# One key per experiment, in the documented forms: plain for a key params.yaml writes, a leading
# + for one that only has a default (inherited from a base or the methods block, or the code's),
# and either after the file's path for a key of params/experiments.yaml.
EXPERIMENTS = "params/experiments.yaml:"
OVERRIDES = {
    "methods.meta_iada.alpha": 0.25,  # the methods block: every experiment that does not set its own
    "+experiments.lt.methods.meta_iada.perturbation_lr": 0.002,
    "experiments.lt.optim.lr": 0.05,
    EXPERIMENTS + "+experiments.lt_ref.optim.lr": 0.02,
    EXPERIMENTS + "+experiments.lt_paper.data.longtail.imbalance_ratio": 50,
    EXPERIMENTS + "+experiments.lt_paper.methods.meta_iada.perturbation_lr": 0.003,
    EXPERIMENTS + "experiments.lt_paper.optim.warmup_epochs": 3,
    EXPERIMENTS + "+experiments.noisy.methods.meta_iada.meta_interval": 2,
    EXPERIMENTS + "+experiments.noisy_paper.methods.la.tau": 0.5,
    EXPERIMENTS + "+experiments.subpop.methods.iada.epsilon": -0.2,
    EXPERIMENTS + "+experiments.subpop_cifar.optim.lr": 0.02,
    EXPERIMENTS + "+experiments.subpop_irm.data.subpop.test_correlation": 0.2,
    EXPERIMENTS + "+experiments.subpop_paper.methods.isda.alpha": 0.75,
    EXPERIMENTS + "+experiments.glt.methods.meta_iada.direction": "gradient",
    EXPERIMENTS + "experiments.glt_paper.pretrain_epochs": 150,
    EXPERIMENTS + "+experiments.noisy_ref.methods.ldam_drw.drw_epoch": 12,  # derived (the first milestone) unless set
    "+methods.meta_iada.pseudo_step": "optimizer",  # a key with the code's default only
}


def get(node, dotted):
    for part in dotted.split("."):
        node = node[part]
    return node


def dotted_key(option: str) -> str:
    """The dotted key that a -S option sets (``[file:][+]key``)."""
    return option.rpartition(":")[2].lstrip("+")


def copy_params(dst: Path) -> Path:
    """The project's params files in ``dst``; returns the copy of params.yaml."""
    shutil.copytree(ROOT / "params", dst / "params")
    return Path(shutil.copy(ROOT / "params.yaml", dst))


def test_dvc_exp_run_set_param_lands_in_the_queued_params_for_every_experiment(tmp_path):
    """The way a user runs a variant: ``dvc exp run --queue -S key=value``, then the queued
    commit's params.yaml must hold the value (and still pass validation)."""
    dvc = Path(sys.executable).parent / "dvc"
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    env.pop("DVC_ROOT", None)
    run = functools.partial(subprocess.run, cwd=tmp_path, env=env, capture_output=True, text=True)
    copy_params(tmp_path)
    shutil.copy(ROOT / "dvc.yaml", tmp_path)
    for cmd in (["git", "init", "-q"], [str(dvc), "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "p"]):
        assert run(cmd).returncode == 0
    sets = [a for k, v in OVERRIDES.items() for a in ("-S", f"{k}={v}")]
    proc = run([str(dvc), "exp", "run", "--queue", *sets])
    assert proc.returncode == 0, proc.stderr
    stash = run(["git", "for-each-ref", "--format=%(objectname)", "refs/exps/celery/stash"]).stdout.split()
    assert len(stash) == 1
    queued_dir = tmp_path / "queued"
    for name in ["params.yaml", *(f"params/{f.name}" for f in (ROOT / "params").iterdir())]:
        (queued_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (queued_dir / name).write_text(run(["git", "show", f"{stash[0]}:{name}"]).stdout)
    queued, _ = read_params(queued_dir / "params.yaml")
    for key, value in OVERRIDES.items():
        assert get(queued, dotted_key(key)) == value, key
    params = load_params(queued_dir / "params.yaml")
    for key, value in OVERRIDES.items():  # each one reaches the resolved config of its experiment
        parts = dotted_key(key).split(".")
        if parts[0] == "experiments":
            assert get(to_dict(params.experiment(parts[1])), ".".join(parts[2:])) == value, key
    lt, lt_ref, noisy_ref = (params.experiment(n) for n in ("lt", "lt_ref", "noisy_ref"))
    assert lt.method_config("meta_iada").alpha == noisy_ref.method_config("meta_iada").alpha == 0.25
    assert lt.method_config("meta_iada").perturbation_lr == lt_ref.method_config("meta_iada").perturbation_lr == 0.002
    assert noisy_ref.method_config("meta_iada").meta_interval == 2  # noisy's value, inherited
    assert lt.method_config("meta_iada").meta_interval == lt_ref.method_config("meta_iada").meta_interval == 1
    assert lt.method_config("meta_iada").pseudo_step == noisy_ref.method_config("meta_iada").pseudo_step == "optimizer"
    assert noisy_ref.method_config("ldam_drw").drw_epoch == 12  # set: wins over milestone 20
    assert params.experiment("lt_paper").data.longtail.imbalance_ratio == 50
    assert lt.data.longtail.imbalance_ratio == 100  # the others keep theirs
    # A key that does not exist is refused by DVC itself (nothing queued), never dropped; so is the
    # other form of a key (plain for an unwritten key, + for a written one), and a key of
    # params/experiments.yaml set without its file.
    for wrong in ("methods.meta_iada.alpah=0.25", "experiments.lt_ref.optim.lr=0.02", "+experiments.lt.optim.lr=0.05",
                  EXPERIMENTS + "experiments.lt_ref.optim.lr=0.02", "experiments.lt_paper.optim.warmup_epochs=3"):
        proc = run([str(dvc), "exp", "run", "--queue", "-S", wrong])
        assert proc.returncode != 0, wrong


def test_the_printed_apply_line_of_every_searched_key_lands(tmp_path):
    """``pipeline.tuning.study`` prints ``dvc exp run -S`` lines built by ``Params.set_option``: a
    searched key of an experiment is usually inherited (plain ``-S`` is refused for it) or written
    (``+`` is refused): DVC's own writer must take each line and the value must reach the config."""
    from dvc.utils.cli_parse import to_path_overrides
    from dvc.utils.hydra import apply_overrides

    params = load_params(ROOT / "params.yaml")
    searched = [(name, key) for name, exp in params.experiments.items() for key in exp.search]
    assert searched
    forms = set()
    for name, key in searched:
        exp = params.experiment(name)
        value = next(v for v in exp.search[key].ends() if v != get(to_dict(exp), key))  # a change that shows
        option = set_option(params.written, f"experiments.{name}.{key}", yaml_scalar(value))
        forms.add(option.rpartition(":")[2][0] == "+")
        shutil.rmtree(tmp_path / "params", ignore_errors=True)
        path = copy_params(tmp_path)
        for file, overrides in to_path_overrides([option]).items():  # as dvc exp run -S reads it
            apply_overrides(tmp_path / file, overrides)
        assert get(to_dict(load_params(path).experiment(name)), key) == value, option
    assert forms == {True, False}  # both forms are exercised


def test_a_search_space_is_written_under_tune_search_and_names_an_experiment(raw):
    """Search spaces live in params/tune.yaml (tune.search.<experiment>), not in the experiment: an
    experiment's own search block, or a space for an experiment that does not exist, is one error."""
    assert parse_params(copy.deepcopy(raw)).experiments["lt"].search  # lt's space reaches its experiment
    bad = copy.deepcopy(raw)
    bad["experiments"]["lt"]["search"] = bad["tune"]["search"].pop("lt")
    with pytest.raises(ParamError, match=r"^experiments.lt.search: an experiment's search space is written under "
                                         r"tune.search.lt \(params/tune.yaml\)$"):
        parse_params(bad)
    bad = copy.deepcopy(raw)
    bad["tune"]["search"]["lt_typo"] = bad["tune"]["search"]["lt"]
    with pytest.raises(ParamError, match=r"^tune.search.lt_typo: there is no experiment 'lt_typo'"):
        parse_params(bad)
