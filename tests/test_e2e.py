"""End to end: `dvc repro` on a tiny profile in a temporary git copy of the repository.

The copy gets a tiny params.yaml (CIFAR-10 (JPEG) subsampled to a few images per class,
ResNet-8, one or two epochs) and its own MLflow store; the real offline data are read from
``../shared/data`` through ``META_IADA_SHARED_DATA``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline.layout import shared_data_dir
from pipeline.params.file import read_params

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.e2e

TINY_DATA = {"scenario": "longtail", "source": "cifar10", "meta_per_class": 3, "val_per_class": 4,
             "limit_per_class": 40, "test_limit_per_class": 15, "longtail": {"imbalance_ratio": 10}}


def tiny_params() -> dict:
    params = read_params(ROOT / "params.yaml")[0]
    lt = params["experiments"]["lt"]  # written in full (no base); the methods block stays
    lt.update(data=TINY_DATA, network={"arch": "resnet8", "channels_last": True}, pretrain_epochs=2,
              train_epochs=1, meta_batch_size=10, eval_batch_size=100)
    lt["optim"].update(batch_size=16, warmup_epochs=1, milestones=[2])
    params["experiments"] = {"tiny": lt}
    params["tune"] = {"run": [], "studies": {}}
    params["reference"] = {"subject": "meta_iada", "experiments": {}}  # no reference runs; the committed ones are reported
    params["run"] = {"experiments": ["tiny"], "methods": ["ce", "meta_iada"], "seeds": [0], "device": "cpu"}
    return params


def sh(cmd: list[str], cwd: Path, env: dict, timeout: int = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def params_files(params: dict) -> dict[str, str]:
    """``params`` (every block, as :func:`~pipeline.params.file.read_params` merges them) as the
    project's params files: ``tune`` and ``reference`` in theirs, every experiment in params.yaml."""
    def dump(blocks: dict) -> str:
        return yaml.safe_dump(blocks, sort_keys=False)

    return {"params.yaml": dump({k: v for k, v in params.items() if k not in ("tune", "reference")}),
            "params/experiments.yaml": dump({"experiments": {}}), "params/tune.yaml": dump({"tune": params["tune"]}),
            "params/reference.yaml": dump({"reference": params["reference"]})}


def make_repo(dst: Path, params: dict[str, str]) -> dict:
    """A git copy of the repository's tracked files (no outputs) at ``dst`` with ``params`` (path ->
    text of every params file, :func:`params_files`) as its params files, committed; returns the
    environment to run dvc in it (no MLFLOW_TRACKING_URI, so the copy's own store ``dst/mlflow.db``)."""
    if not (shared_data_dir() / "cifar10-jpeg.tar.gz").is_file():
        pytest.fail(f"the offline CIFAR-10 copy is missing at {shared_data_dir()}")
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split("\0")
    for f in filter(None, files):
        outputs = ("data/", "models/", "metrics/", "plots/", "reports/", "reference/")  # reference/: the
        # reference sweeps' stages, generated from the real params (a test generates its own)
        if (ROOT / f).is_file() and not f.startswith(outputs):
            (dst / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, dst / f)
    for name, text in params.items():
        (dst / name).write_text(text)
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "META_IADA_SHARED_DATA": str(shared_data_dir()),
           "DVC_NO_ANALYTICS": "1", "PYTHONPATH": str(dst), "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("DVC_ROOT", None)
    sh(["git", "init", "-q"], dst, env)
    sh(["git", "add", "-A"], dst, env)
    sh(["git", "commit", "-qm", "tiny"], dst, env)
    return env


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    dst = tmp_path_factory.mktemp("e2e") / "repo"
    env = make_repo(dst, params_files(tiny_params()))
    first = sh(["dvc", "repro"], dst, env, timeout=900)
    second = sh(["dvc", "repro"], dst, env)
    return dst, env, first, second


def test_metrics_files_have_both_selection_rules(repo):
    dst, *_ = repo
    for method in ("ce", "meta_iada"):
        m = json.loads((dst / "metrics/tiny/detail" / f"{method}-s0.json").read_text())
        summary = json.loads((dst / "metrics/tiny" / f"{method}-s0.json").read_text())
        assert summary["final"] == {"acc": m["final"]["headline"]["acc"]}  # dvc metrics show stays narrow
        assert m["data"] == "CIFAR-10 (JPEG)" and m["selection_metric"] == "val_acc"
        for rule in ("final", "selected"):
            t = m[rule]["test"]
            assert 0.0 <= t["acc"] <= 1.0
            assert set(t["per_class_acc"]) == {str(c) for c in range(10)}
            assert {"many_acc", "medium_acc", "few_acc"} <= set(t)
            assert 0.0 <= m[rule]["val"]["acc"] <= 1.0
        assert m["final"]["epoch"] == 2  # global epoch index of the last trained epoch
    assert_epsilon_statistics_agree(dst)


def assert_epsilon_statistics_agree(dst: Path) -> None:
    """The ε statistics of the metrics file against the saved last ε of every training sample
    (NaN: never visited) and the training labels, and against the training side: with one
    Meta-IADA epoch, each visited sample's last ε is the ε of its only visit, so the epoch's
    logged means (history.json) are the same numbers."""
    eps = json.loads((dst / "metrics/tiny/detail/meta_iada-s0.json").read_text())["epsilon"]
    with np.load(dst / "models/tiny/s0/meta_iada/sample_scores.npz") as npz:
        last = npz["epsilon"]
    with np.load(dst / "data/prepared/tiny/arrays.npz") as npz:
        train_y = npz["train/y"]
    seen = np.isfinite(last)
    assert len(last) == len(train_y) and seen.sum() >= 16  # at least one batch of 16
    assert eps["mean"] == pytest.approx(float(last[seen].astype(np.float64).mean()), abs=1e-6)
    assert eps["adversarial_share"] == pytest.approx(float((last[seen] > 0).mean()), abs=1e-12)
    per_class = {str(c): float(last[seen & (train_y == c)].astype(np.float64).mean()) for c in np.unique(train_y[seen])}
    assert eps["per_class_mean"].keys() == per_class.keys()
    for c, value in per_class.items():
        assert eps["per_class_mean"][c] == pytest.approx(value, abs=1e-6), c
    (logged,) = json.loads((dst / "models/tiny/s0/meta_iada/history.json").read_text())["history"]
    assert logged["eps_mean"] == pytest.approx(eps["mean"], abs=1e-6)
    assert logged["eps_adv_share"] == pytest.approx(eps["adversarial_share"], abs=1e-12)
    for c, value in per_class.items():
        assert logged[f"eps_class_mean/{c}"] == pytest.approx(value, abs=1e-6), c


def test_dvc_outputs_and_second_repro_is_a_no_op(repo):
    dst, env, first, second = repo
    for path in ("data/prepared/tiny/arrays.npz", "data/prepared/tiny/card.json",
                 "models/tiny/s0/pretrain/last.pt", "models/tiny/s0/ce/best.pt",
                 "models/tiny/s0/meta_iada/perturbation_net.pt", "plots/tiny/meta_iada-s0/confusion.csv",
                 "plots/tiny/meta_iada-s0/summary.png", "reports/comparison.md"):
        assert (dst / path).is_file(), path
    assert "Running stage" not in second.stdout
    status = sh(["dvc", "status"], dst, env).stdout
    assert "changed" not in status
    # Bytecode caches are not dependencies: a test run or another Python version writing new
    # files under __pycache__ of a directory dependency must not make DVC rerun the pipeline.
    for package in ("pipeline/data", "pipeline/methods"):
        cache = dst / package / "__pycache__"
        cache.mkdir(exist_ok=True)
        (cache / "stray.cpython-399.pyc").write_bytes(bytes(16))
    status = sh(["dvc", "status"], dst, env).stdout
    assert "changed" not in status, status
    report = (dst / "reports/comparison.md").read_text()
    for method in ("ce", "meta_iada"):
        assert re.search(rf"^\| {method} \| deferred \| 1 \|", report, re.M), report
    side_by_side = sh(["dvc", "exp", "show", "--no-pager", "--drop", ".*", "--keep", "Experiment|.*selected.acc"],
                      dst, {**env, "COLUMNS": "150"}).stdout
    assert "metrics/tiny/meta_iada-s0.json:selected.acc" in side_by_side and "…" not in side_by_side
    assert max(len(line) for line in side_by_side.splitlines()) <= 150
    shown = json.loads(sh(["dvc", "metrics", "show", "--json"], dst, env).stdout)
    assert "metrics/tiny/ce-s0.json" in json.dumps(shown)
    table = sh(["dvc", "metrics", "show"], dst, env).stdout.splitlines()
    assert len(table) == 3 and max(map(len, table)) <= 150, table  # a header and one row per run


def test_plots_render_offline(repo):
    dst, env, *_ = repo
    sh(["dvc", "plots", "show", "-o", "plots_html"], dst, env)
    html = (dst / "plots_html/index.html").read_text()
    assert "<script src" not in html and "vegaEmbed" in html
    shown = json.loads(sh(["dvc", "plots", "show", "--json"], dst, env).stdout)
    assert not shown.get("errors"), shown["errors"]
    # the methods side by side, from files in git: a line per method of run.methods (dvc.yaml's
    # top-level plots) for the validation curve and per-class accuracy, and the report's figures
    charts = {path: chart for path, chart in shown["data"].items() if path.endswith(".csv")}
    assert set(charts) == {"reports/curves/tiny.csv", "reports/per_class/tiny.csv"}
    for chart in charts.values():
        assert {row["field"] for row in chart[0]["content"]["data"]["values"]} == {"ce", "meta_iada"}
    overlays = {Path(p).name for p in shown["data"] if p.startswith("reports/figures/")}
    assert overlays == {f"tiny-{kind}.png" for kind in ("results", "per_class", "curves", "epsilon")}


def test_mlflow_has_every_stage_run_with_metrics_and_the_registered_network(repo):
    dst, env, *_ = repo
    code = f"""
import json, mlflow
from mlflow.tracking import MlflowClient
mlflow.set_tracking_uri("sqlite:///{dst}/mlflow.db")
c = MlflowClient()
exp = c.get_experiment_by_name("long-tail")
runs = c.search_runs([exp.experiment_id])
out = {{r.info.run_name: {{"metrics": sorted(r.data.metrics), "tags": r.data.tags, "status": r.info.status,
        "id": r.info.run_id, "artifacts": [a.path for a in c.list_artifacts(r.info.run_id)]}} for r in runs}}
name = "perturbation_net-tiny"
out["_versions"] = [v.run_id for v in c.search_model_versions(f"name='{{name}}'")]
import mlflow.pytorch, torch
net = mlflow.pytorch.load_model(f"models:/{{name}}/1")
out["_net"] = [type(net).__name__, list(net(torch.randn(4, net.body[0].num_features)).shape)]
out["_location"] = exp.artifact_location
out["_champion"] = c.get_model_version_by_alias(name, "champion").version
out["_description"] = c.get_registered_model(name).description
info = mlflow.models.get_model_info(f"models:/{{name}}/1")
out["_signature"] = [str(info.signature.inputs), str(info.signature.outputs), info.saved_input_example_info is not None]
meta_run = c.get_run(out["tiny-meta_iada-s0"]["id"])
out["_inputs"] = [[d.dataset.name, d.dataset.digest, d.dataset.source] for d in meta_run.inputs.dataset_inputs
                 if d.dataset.name.endswith("longtail")]  # the training split (val and test are inputs too)
print(json.dumps(out))
"""
    runs = json.loads(sh([sys.executable, "-c", code], dst, env).stdout.strip().splitlines()[-1])
    assert {"tiny-prepare", "tiny-pretrain-s0", "tiny-ce-s0", "tiny-meta_iada-s0"} <= set(runs)
    meta = runs["tiny-meta_iada-s0"]
    assert meta["status"] == "FINISHED"
    assert {"curves/val/acc", "curves/train/loss", "epsilon/mean", "epsilon/adv_share", "test/selected/acc"} <= set(
        meta["metrics"])
    assert {"checkpoint", "plots", "data_card.json", "metrics.json"} <= set(meta["artifacts"])
    assert meta["tags"]["dvc_exp_name"] == "workspace" and len(meta["tags"]["git_commit"]) == 40
    assert runs["_versions"] == [meta["id"]]  # registered from the Meta-IADA run
    assert runs["_net"] == ["PerturbationNet", [4]]  # loads back as its class, epsilon per sample
    assert runs["_location"].startswith(f"file://{dst}")
    assert str(runs["_champion"]) == "1" and "validation-selected" in runs["_description"]
    inputs, outputs, example = runs["_signature"]
    assert "float32" in inputs and "(-1, 15)" in inputs and "(-1,)" in outputs and example
    (name, digest, source), = runs["_inputs"]
    assert name == "CIFAR-10 (JPEG) longtail" and len(digest) == 16 and "data/prepared/tiny" in source
