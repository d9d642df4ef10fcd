"""params.yaml validation: every user mistake stops before any work with one message naming the key."""

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.config import ParamError
from pipeline.experiment import parse_params

ROOT = Path(__file__).resolve().parents[1]


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
])
def test_bad_values_name_the_key(raw, path, value, expect):
    with pytest.raises(ParamError, match=expect.replace(".", r"\.")):
        parse_params(mutate(raw, path, value))


@pytest.mark.parametrize("path", ["experiments.lt.optim.learning_rate", "experiments.lt.data.rho",
                                  "experiments.lt.methods.meta_iada.gamma", "bogus"])
def test_unknown_keys_are_rejected_with_the_allowed_ones(raw, path):
    with pytest.raises(ParamError, match=r"unknown (top-level )?key") as err:
        parse_params(mutate(raw, path, 1))
    assert "allowed" in str(err.value)


def test_unknown_method_block(raw):
    with pytest.raises(ParamError, match="unknown method methods.mixup"):
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
