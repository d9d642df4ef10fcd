"""DVC experiments as a user runs them: variants queued with ``dvc exp run --queue -S`` and run two
at a time by ``dvc queue start -j 2`` (each in its own temporary copy, all logging to the one
MLflow store of the real root), the table that compares them, the device of a run, and what
``-S`` does to the user's ``params.yaml``.

The end-to-end part runs on tiny data in a temporary git copy (:func:`tests.test_e2e.make_repo`)
whose params files are the project's own, comments and layout kept, cut down by DVC's own YAML
writer: params.yaml keeps ``run``, ``methods`` and ``lt``; ``params/experiments.yaml`` holds one tiny
experiment, a delta of ``lt``.
"""

from __future__ import annotations

import difflib
import json
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from pipeline.engine.build import resolve_device
from pipeline.params.file import RunConfig
from pipeline.params.schema import ParamError, build
from tests.test_e2e import TINY_DATA, make_repo, sh

ROOT = Path(__file__).resolve().parents[2]
# The documented forms of -S (README, "The pipeline"): plain for a key params.yaml writes (the
# methods block, every experiment's default), a leading + for one that only has a default (lt's,
# which tiny inherits across the files), and the file's path for a key of params/experiments.yaml.
ALPHA = "methods.meta_iada.alpha"
OVERRIDES = {"alpha-010": f"{ALPHA}=0.1", "alpha-025": f"params/experiments.yaml:+experiments.tiny.{ALPHA}=0.25",
             "alpha-075": f"+experiments.lt.{ALPHA}=0.75"}
VARIANTS = {"alpha-010": 0.1, "alpha-025": 0.25, "alpha-075": 0.75}  # experiment name -> alpha
TINY = {"base": "lt", "data": TINY_DATA, "optim": {"batch_size": 16, "warmup_epochs": 1, "milestones": [2]},
        "pretrain_epochs": 2, "train_epochs": 1, "meta_batch_size": 10, "eval_batch_size": 100}


def readme_view() -> list[str]:
    """The README's view that compares experiments (its ``dvc exp show --only-changed`` line), as argv."""
    line, = (line for line in (ROOT / "README.md").read_text().splitlines()
             if line.startswith("dvc exp show --only-changed"))
    return shlex.split(line, comments=True)


# --- what -S writes back into params.yaml ---------------------------------------------------------


def set_param(path: Path, override: str) -> None:
    """What ``dvc exp run -S`` does to params.yaml (the workspace file, or the experiment's copy)."""
    from dvc.utils.hydra import apply_overrides

    apply_overrides(path, [override])


def changed_lines(before: str, after: str) -> list[tuple[str, str]]:
    """(old, new) of each line that differs; a different line count is one ("", "<added/removed>")."""
    a, b = before.splitlines(keepends=True), after.splitlines(keepends=True)
    out = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes():
        if tag == "replace" and i2 - i1 == j2 - j1:
            out += list(zip(a[i1:i2], b[j1:j2]))
        elif tag != "equal":
            out.append(("".join(a[i1:i2]), "".join(b[j1:j2]) or "<removed>"))
    return out


def assert_only_the_value_changed(before: str, after: str, key: str, value: str) -> None:
    """``after`` is ``before`` byte for byte except the one line of ``key``, which holds ``value``
    and keeps its comment."""
    changes = changed_lines(before, after)
    assert len(changes) == 1, "".join(f"- {old}+ {new}" for old, new in changes)
    (old, new), = changes
    leaf = key.rsplit(".", 1)[-1]
    assert re.search(rf"(^\s*|{{|, ){re.escape(leaf)}: {re.escape(value)}([,}}\s]|$)", new), (old, new)
    assert old.partition("#")[2] == new.partition("#")[2], (old, new)  # the comment stays


@pytest.mark.parametrize("file, key, value", [
    ("params.yaml", "methods.meta_iada.alpha", "0.25"),  # a commented scalar
    ("params.yaml", "run.device", "cuda:1"),
    ("params.yaml", "experiments.lt.optim.lr", "0.05"),
    ("params/experiments.yaml", "experiments.subpop.data.subpop.correlation", "0.8"),  # beside null values
    ("params.yaml", "experiments.lt.network.arch", "resnet32"),  # inside an inline {...}
    ("params.yaml", "methods.ldam_drw.drw_epoch", "12"),  # an empty (derived) value
])
def test_set_param_rewrites_only_its_own_line_of_params_yaml(tmp_path, file, key, value):
    """DVC's -S writer replaces every list and drops ``null`` (block lists, empty values) and wraps
    inline mappings past 80 columns; the params files are written in that form, so a -S changes its
    own line and nothing else (comments, order, layout stay as written)."""
    path = tmp_path / "params.yaml"
    before = (ROOT / file).read_text()
    path.write_text(before)
    set_param(path, f"{key}={value}")
    assert_only_the_value_changed(before, path.read_text(), key, value)
    if file == "params.yaml":
        set_param(path, "run.device=auto")  # the value it has: nothing changes
        path.write_text(before)
        set_param(path, "run.device=auto")
        assert path.read_text() == before


# --- run.device ----------------------------------------------------------------------------------


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:0", "cuda:1", "cuda:12"])
def test_run_device_accepts_cuda_n(device):
    assert build(RunConfig, {"device": device}, "run").device == device


@pytest.mark.parametrize("device", ["gpu", "cuda:", "cuda:one", "cuda1", "CUDA", "cuda:-1", " cpu", "cpu:0"])
def test_run_device_refuses_anything_else_in_one_line(device):
    with pytest.raises(ParamError) as err:
        build(RunConfig, {"device": device}, "run")
    message = str(err.value)
    assert message.startswith(f"run.device = {device!r} is not a device") and "cuda:N" in message
    assert "\n" not in message


def test_a_cuda_device_this_machine_lacks_is_one_error(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ParamError, match=r"run.device = 'cuda:1' but no CUDA device is available"):
        resolve_device("cuda:1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ParamError, match=r"run.device = 'cuda:2' but this machine has 2 CUDA device\(s\): "
                                         r"use cuda:0 to cuda:1"):
        resolve_device("cuda:2")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_device("cpu") == torch.device("cpu")


# --- the queue, end to end -----------------------------------------------------------------------


def styled_tiny_params(folder: Path) -> dict[str, str]:
    """The project's params files cut down by DVC's YAML writer (so their comments and layout are
    the real files'): params.yaml as it is but for ``run`` (meta_iada on the tiny experiment), the tiny
    experiment alone in params/experiments.yaml, no studies and no reference runs."""
    from dvc.utils.collections import merge_dicts, remove_missing_keys
    from dvc.utils.serialize import modify_yaml

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    wanted = {"params.yaml": {**raw, "run": {"experiments": ["tiny"], "methods": ["meta_iada"], "seeds": [0],
                                             "device": "cpu"}},
              "params/experiments.yaml": {"experiments": {"tiny": TINY}},
              "params/tune.yaml": {"tune": {"run": [], "studies": {}}},
              "params/reference.yaml": {"reference": {"subject": "meta_iada", "experiments": {}}}}
    out = {}
    for name, new in wanted.items():
        path = folder / name.replace("/", "-")
        shutil.copy(ROOT / name, path)
        with modify_yaml(path) as data:
            if name == "params/experiments.yaml":
                data["experiments"].insert(0, "tiny", data["experiments"]["lt_ref"])
            merge_dicts(data, new)
            remove_missing_keys(data, new)
        out[name] = path.read_text()
    return out


def queue_status(dst: Path, env: dict) -> dict[str, str]:
    """Experiment name -> state (Queued, Running, Success, Failed) from ``dvc queue status``."""
    out = sh(["dvc", "queue", "status"], dst, env).stdout
    rows = re.findall(r"^[0-9a-f]{7}\s+(\S+)\s.*\s(Queued|Running|Success|Failed)\s*$", out, re.M)
    return dict(rows)


def experiments_running(dst: Path) -> int:
    """How many of ``dst``'s queued experiments are running now (their ``dvc exp exec-run`` processes)."""
    import psutil

    count = 0
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if "exec-run" in cmdline and any(str(dst / ".dvc" / "tmp" / "exps") in arg for arg in cmdline):
            count += 1
    return count


def queue_logs(dst: Path, env: dict, names) -> str:
    return "\n".join(f"--- dvc queue logs {name}\n" + subprocess.run(
        ["dvc", "queue", "logs", name], cwd=dst, env=env, capture_output=True, text=True).stdout[-4000:]
        for name in names)


def mlflow_runs(dst: Path, env: dict) -> list[dict]:
    code = f"""
import json, mlflow
from mlflow.tracking import MlflowClient
c = MlflowClient("sqlite:///{dst}/mlflow.db")
out = [{{"name": r.info.run_name, "status": r.info.status, "start": r.info.start_time, "end": r.info.end_time,
         "exp": r.data.tags.get("dvc_exp_name"), "alpha": r.data.params.get("method.alpha"),
         "metrics": sorted(r.data.metrics)}}
       for e in c.search_experiments() for r in c.search_runs([e.experiment_id])
       if e.name == "long-tail"]
out.append(sorted(v.run_id for v in c.search_model_versions("name='perturbation_net-tiny'")))
print(json.dumps(out))
"""
    *runs, versions = json.loads(sh([sys.executable, "-c", code], dst, env).stdout.strip().splitlines()[-1])
    return runs + [{"versions": versions}]


@pytest.fixture(scope="module")
def queued(tmp_path_factory):
    """dvc repro of the tiny experiment, committed; then the variants queued and run two at a time."""
    dst = tmp_path_factory.mktemp("queue") / "repo"
    dst.mkdir(parents=True)
    env = make_repo(dst, styled_tiny_params(tmp_path_factory.mktemp("params")))
    sh(["dvc", "repro"], dst, env, timeout=900)
    sh(["git", "add", "-A"], dst, env)
    sh(["git", "commit", "-qm", "repro"], dst, env)
    before = (dst / "params.yaml").read_bytes()
    before_files = {f: f.read_bytes() for f in (dst / "params").iterdir()}
    for name, override in OVERRIDES.items():
        sh(["dvc", "exp", "run", "--queue", "-n", name, "-S", override], dst, env)
    after_queueing = (dst / "params.yaml").read_bytes()
    assert {f: f.read_bytes() for f in (dst / "params").iterdir()} == before_files
    start, samples, stop = time.monotonic(), [0], threading.Event()

    def sample() -> None:  # `dvc queue status` can wait for a run to release the repository
        while not stop.wait(0.5):
            samples.append(experiments_running(dst))

    threading.Thread(target=sample, daemon=True).start()
    try:
        sh(["dvc", "queue", "start", "-j", "2"], dst, env)
        while True:
            status = queue_status(dst, env)
            if set(status) >= set(VARIANTS) and not {"Queued", "Running"} & set(status.values()):
                break
            if time.monotonic() - start > 600:
                pytest.fail(f"the queue did not finish in 10 min: {status}\n{queue_logs(dst, env, VARIANTS)}")
            time.sleep(2)
        stop.set()
        seconds = time.monotonic() - start
        failed = [name for name in VARIANTS if status.get(name) != "Success"]
        if failed:
            pytest.fail(f"queued experiments did not succeed: {status}\n{queue_logs(dst, env, failed)}")
        yield dst, env, before, after_queueing, seconds, max(samples)
    finally:
        stop.set()
        subprocess.run(["dvc", "queue", "stop", "--kill"], cwd=dst, env=env, capture_output=True, timeout=60)


@pytest.mark.e2e
def test_queued_variants_run_two_at_a_time_and_each_lands_in_mlflow_and_exp_show(queued):
    dst, env, before, after_queueing, seconds, most_running = queued
    print(f"queue of {len(VARIANTS)} experiments, 2 workers: {seconds:.0f} s")
    assert most_running == 2  # two experiments ran at once
    assert after_queueing == before  # queueing leaves the workspace's params.yaml as it was
    logs = queue_logs(dst, env, VARIANTS)
    assert "database is locked" not in logs and "Traceback" not in logs, logs

    # dvc exp show: every variant, with the alpha it ran (its resolved config) and its metrics.
    found = shown_variants(dst, env)
    assert {name: alpha for name, (alpha, _) in found.items()} == VARIANTS
    assert all(0.0 <= acc <= 1.0 for _, acc in found.values())

    # MLflow: one training run per queued experiment (prepare and pretrain came from the cache),
    # finished, in the scenario's experiment, with its alpha and the evaluation's test metrics.
    *runs, versions = mlflow_runs(dst, env)
    queued_runs = [r for r in runs if r["exp"] in VARIANTS]
    assert sorted(r["exp"] for r in queued_runs) == sorted(VARIANTS), runs
    for r in queued_runs:
        assert r["name"] == f"tiny-meta_iada-s0 ({r['exp']})" and r["status"] == "FINISHED", r  # told apart
        assert float(r["alpha"]) == VARIANTS[r["exp"]], r
        assert "test/selected/acc" in r["metrics"] and "curves/val/acc" in r["metrics"], r
    assert len(versions["versions"]) == 1 + len(VARIANTS)  # the workspace run's network and one per variant



def shown_variants(dst: Path, env: dict) -> dict[str, tuple[float, float]]:
    """Experiment name -> (alpha as it ran, from its resolved config; its selected test accuracy)
    from ``dvc exp show --json``."""
    shown = json.loads(sh(["dvc", "exp", "show", "--no-pager", "--json"], dst, env).stdout)
    found = {}
    for baseline in shown:
        for exp in baseline.get("experiments") or []:
            for rev in exp["revs"]:
                data = rev["data"]
                alpha = data["params"]["configs/tiny.json"]["data"]["methods"]["meta_iada"]["alpha"]
                acc = data["metrics"]["metrics/tiny/meta_iada-s0.json"]["data"]["selected"]["acc"]
                found[rev["name"]] = (alpha, acc)
    return found


@pytest.mark.e2e
def test_the_readmes_view_shows_each_changed_value_beside_its_headline_metric_in_150_columns(queued):
    """The README's `dvc exp show` line, run as written in a 150-column terminal: nothing cut, and
    on each variant's row its headline metric (validation-selected test accuracy) beside the
    value it changed, as the run used it (its resolved config), whichever params file -S wrote."""
    dst, env, *_ = queued
    table = sh(readme_view(), dst, {**env, "COLUMNS": "150"}).stdout
    lines = table.splitlines()
    assert max(map(len, lines)) <= 150 and "…" not in table, table
    header = next(line for line in lines if "selected.acc" in line)
    assert re.search(rf"selected\.acc\s+configs/tiny\.json:{re.escape(ALPHA)}\s*$", header), table
    for name, (alpha, acc) in shown_variants(dst, env).items():
        row = next(line for line in lines if f"[{name}]" in line)
        shown = re.search(rf"\]\s+(?:Success\s+\S+\s+)?([0-9.]+)\s+{alpha:g}\s*$", row)  # (a queued run's state)
        assert shown and float(shown.group(1)) == pytest.approx(acc, abs=1e-3), (row, acc)


@pytest.mark.e2e
def test_plots_diff_draws_the_committed_run_and_a_variant_on_one_chart(queued):
    """`dvc plots diff <rev> <exp>`: the plot data of both revisions load (they are in git, not in
    the ignored plots/ folder), and each chart of the methods holds the lines of both."""
    dst, env, *_ = queued
    shown = json.loads(sh(["dvc", "plots", "diff", "HEAD", "alpha-010", "--json"], dst, env).stdout)
    assert not shown.get("errors"), shown["errors"]
    for path in ("reports/curves/tiny.csv", "reports/per_class/tiny.csv"):
        rows = shown["data"][path][0]["content"]["data"]["values"]
        revs = {r["rev"] for r in rows}
        assert len(revs) == 2 and "HEAD" in revs, (path, revs)
        assert all(r.get("field", "meta_iada") == "meta_iada" and "meta_iada" in r for r in rows), rows[:2]  # its line


@pytest.mark.e2e
def test_a_misspelt_experiment_stops_in_one_line_and_dvc_checkout_restores_the_outputs(queued):
    """What the README says of a misspelt name in ``run``: ``dvc exp run`` checks out the new
    pipeline before any stage (or any code of the project) runs, so the outputs of the stages no
    longer in it leave the workspace, and -S has written params.yaml; the run stops with one
    error line. ``git checkout params.yaml`` and ``dvc checkout`` bring every output back from
    the cache, with nothing to rerun."""
    dst, env, *_ = queued
    best = dst / "models/tiny/s0/meta_iada/best.pt"
    proc = subprocess.run(["dvc", "exp", "run", "-S", "run.experiments=[tinyy]"], cwd=dst, env=env,
                          capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    errors = [line for line in out.splitlines() if line.startswith("ERROR")]
    assert proc.returncode != 0 and len(errors) == 1 and "'config@tinyy'" in errors[0], out
    assert "error: run.experiments[0] = 'tinyy' is not declared: use one of lt, tiny" in out, out  # the loader's one line
    assert not best.exists()
    sh(["git", "checkout", "params.yaml"], dst, env)
    sh(["dvc", "checkout"], dst, env)
    assert best.is_file() and "Data and pipelines are up to date." in sh(["dvc", "status"], dst, env).stdout


@pytest.mark.e2e
def test_set_param_keeps_the_users_params_yaml_whether_the_run_fails_or_not(queued):
    """Failing (a value the loader rejects) and succeeding, with and without --temp: --temp leaves
    params.yaml byte for byte; a workspace run changes the one line of the value it sets."""
    dst, env, before_bytes, *_ = queued
    before = before_bytes.decode()
    path = dst / "params.yaml"
    bad = "methods.meta_iada.direction"  # set to "upside_down": not the length of "pairwise", so that git's
    # stat cache cannot take the changed file for the committed one (a same-size rewrite within the
    # index's second is invisible to git status and git checkout)
    for temp in (["--temp"], []):
        proc = subprocess.run(["dvc", "exp", "run", *temp, "-S", f"{bad}=upside_down"], cwd=dst, env=env,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode != 0 and "direction" in proc.stdout + proc.stderr, proc.stdout + proc.stderr
        if temp:
            assert path.read_text() == before
        else:
            assert_only_the_value_changed(before, path.read_text(), bad, "upside_down")
            assert sh(["git", "status", "--short"], dst, env).stdout == " M params.yaml\n"  # configs/ kept
            sh(["git", "checkout", "params.yaml"], dst, env)
    for temp in (["--temp"], []):  # alpha 0.25 ran in the queue: DVC's run cache makes these fast
        sh(["dvc", "exp", "run", *temp, "-S", f"{ALPHA}=0.25"], dst, env)
        if temp:
            assert path.read_text() == before
        else:
            assert_only_the_value_changed(before, path.read_text(), ALPHA, "0.25")
