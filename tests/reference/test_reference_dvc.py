"""The reference sweeps as DVC stages (``reference/dvc.yaml``): generated from the params and held
to them, one stage per run whose command carries its configuration hash, a lock that records
every committed metrics file, and, in a real repository, DVC running a run, skipping a finished
one and finding stale exactly the runs a changed hyperparameter touches."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest
import yaml

from pipeline.params.file import load_params, parse_params
from pipeline.reference import dvcfile
from pipeline.reference.plan import plan
from pipeline.stages import reference as reference_stage
from tests.reference.test_reference_sweep import raw_params
from pipeline.layout import REFERENCE_DVC_FILE
from pipeline.reference.closure import closure
from tests.stages.test_dvc_deps import stale_in_repo
from tests.test_e2e import make_repo, params_files, sh

ROOT = Path(__file__).resolve().parents[2]
TWO_RUNS = {"seeds": [0], "experiments": {"tiny": {"methods": ["ce", "meta_iada"]}}}


def test_the_committed_reference_dvc_yaml_is_what_the_params_generate():
    problem = dvcfile.out_of_sync(load_params(ROOT / "params.yaml"), ROOT / "reference/dvc.yaml")
    assert problem is None, f"{problem}: run `{dvcfile.SYNC_COMMAND}` and commit reference/dvc.yaml"


def test_one_stage_per_planned_run_with_its_hash_and_metrics_file():
    params = load_params(ROOT / "params.yaml")
    stages = yaml.safe_load((ROOT / "reference/dvc.yaml").read_text())["stages"]
    items = stages["run"]["foreach"]
    jobs = plan(params)
    assert list(items) == [dvcfile.job_key(j) for j in jobs]
    for job in jobs:
        item = items[dvcfile.job_key(job)]
        assert item == {"experiment": job.exp.name, "label": job.label, "seed": job.seed,
                        "config": job.config[:dvcfile.HASH_CHARS], "metrics": str(job.metrics_file)}
    assert "--config ${item.config}" in stages["run"]["do"]["cmd"]  # the hash reaches the command


def test_the_lock_records_every_committed_metrics_file():
    """``reference/dvc.lock`` is the record: every finished run's stage is in it with the hash of
    the metrics file that is committed, so ``dvc status`` calls it up to date."""
    lock = yaml.safe_load((ROOT / "reference/dvc.lock").read_text())["stages"]
    params = load_params(ROOT / "params.yaml")
    finished = [j for j in plan(params) if (ROOT / j.metrics_file).is_file()]
    assert len(finished) > 150
    for job in finished:
        entry = lock.get(f"run@{dvcfile.job_key(job)}")
        assert entry is not None, f"{dvcfile.job_key(job)}: finished but not in reference/dvc.lock (dvc commit it)"
        (out,) = entry["outs"]
        assert out["path"] == str(job.metrics_file)
        assert out["md5"] == hashlib.md5((ROOT / job.metrics_file).read_bytes()).hexdigest(), job.metrics_file
        assert f"--config {job.config[:dvcfile.HASH_CHARS]}" in entry["cmd"]


def test_the_committed_lock_of_the_sync_and_report_stages_was_written_by_the_committed_code():
    """``reference/dvc.lock``'s sync and report stages come from the code and params in the tree: a
    change to their import closure is committed with ``dvc repro reference/dvc.yaml:sync`` and
    ``dvc repro --single-item reference/dvc.yaml:report`` (seconds, no training). The runs' own
    entries are the test above; a fresh clone's missing outputs are not a change."""
    stale = stale_in_repo([f"{REFERENCE_DVC_FILE}:sync", f"{REFERENCE_DVC_FILE}:report"])
    assert not stale, ("reference/dvc.lock is stale: run `dvc repro reference/dvc.yaml:sync` and `dvc repro "
                       "--single-item reference/dvc.yaml:report`, and commit reference/dvc.lock:\n"
                       + "\n".join(stale[:20]))


@pytest.mark.parametrize("deps, module", [(dvcfile.sync_deps, "pipeline.stages.reference_sync"),
                                          (dvcfile.report_deps, "pipeline.stages.reference_report")])
def test_the_sync_and_report_stages_depend_on_the_params_and_exactly_their_import_closure(deps, module):
    """Generated from the closure: each module the command imports is covered by one dep, a
    folder only when every module under it is imported (else a change to an unrelated module
    would rerun the stage), and the generated file lists them."""
    deps = deps()
    want = closure(module)
    code = [Path(d) for d in deps if d.startswith("pipeline")]
    assert all(sum(f == d or d in f.parents for d in code) == 1 for f in want)
    broad = [str(p.relative_to(ROOT)) for d in code if (ROOT / d).is_dir() for p in (ROOT / d).rglob("*.py")
             if p.relative_to(ROOT) not in want]
    assert not broad, broad
    assert [d for d in code if not any(f == d or d in f.parents for f in want)] == []
    assert Path("pipeline/methods") in code  # a folder the command imports whole is one dep
    assert {"params.yaml", "params"} <= set(deps)  # every params file
    assert "\n".join(f"      - {d}" for d in deps) in (ROOT / REFERENCE_DVC_FILE).read_text()


def test_no_stage_of_the_default_pipeline_is_downstream_of_a_reference_run():
    """A DVC output inside a stage's directory dependency makes the output's stage upstream of it:
    a reference run's metrics file under a folder the default pipeline depends on would make plain
    `dvc repro` (make repro) train every missing reference run."""
    outs = [str(j.metrics_file) for j in plan(load_params(ROOT / "params.yaml"))]
    for name, stage in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"].items():
        for dep in stage.get("deps", []):
            dep = str(dep).split("${")[0].rstrip("/")
            assert not any(out == dep or out.startswith(dep + "/") for out in outs), (name, dep)


def test_out_of_sync_says_what_changed(tmp_path):
    params = parse_params(raw_params(TWO_RUNS))
    path = tmp_path / "dvc.yaml"
    assert dvcfile.out_of_sync(params, path) == f"{path} is missing"
    assert dvcfile.sync(params, path) and not dvcfile.sync(params, path)  # written once, then up to date
    assert dvcfile.out_of_sync(params, path) is None
    dvcfile.check(params, path)  # up to date: the sync stage's output beside the file checked
    assert (tmp_path / "in_sync").read_text() == f"{path} matches the params\n"
    changed = raw_params({"seeds": [0, 1], "experiments": {"tiny": {"methods": ["ce", "meta_iada"]}}})
    changed["methods"]["meta_iada"]["alpha"] = 0.25
    assert dvcfile.out_of_sync(parse_params(changed), path) == (
        f"{path} is out of date with the params (2 runs added, 1 runs changed)")
    with pytest.raises(Exception, match="run `python -m pipeline.stages.reference_sync` and commit it"):
        dvcfile.check(parse_params(changed), path)


def test_a_run_whose_hash_is_not_the_params_one_is_refused_before_any_work(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    Path("params.yaml").write_text(yaml.safe_dump(raw_params(TWO_RUNS)))
    from pipeline.reference import sweep

    monkeypatch.setattr(sweep, "run", lambda *a, **k: pytest.fail("trained with a stale hash"))
    code = reference_stage.main(["--experiment", "tiny", "--label", "ce", "--seed", "0", "--config", "0123456789ab",
                                 "--no-mlflow"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "run `python -m pipeline.stages.reference_sync`" in err, err
    assert reference_stage.main(["--experiment", "tiny", "--config", "0123456789ab", "--no-mlflow"]) == 2
    assert "give one --experiment, --label and --seed (these select 2)" in capsys.readouterr().err


@pytest.mark.e2e
def test_dvc_runs_a_run_skips_it_after_and_finds_stale_only_what_a_change_touches(tmp_path):
    dst = tmp_path / "repo"
    env = make_repo(dst, params_files(raw_params(TWO_RUNS)))
    sh(["python", "-m", "pipeline.stages.reference_sync"], dst, env)
    sh(["git", "add", "-A"], dst, env)
    sh(["git", "commit", "-qm", "the tiny sweep's stages"], dst, env)
    ce, meta = "reference/dvc.yaml:run@tiny.ce.s0", "reference/dvc.yaml:run@tiny.meta_iada.s0"

    first = sh(["dvc", "repro", ce], dst, env, timeout=600).stdout
    assert "Running stage 'reference/dvc.yaml:run@tiny.ce.s0'" in first, first
    assert (dst / "reference/metrics/tiny/ce-s0.json").is_file()
    assert not (dst / "reference/metrics/tiny/meta_iada-s0.json").exists()  # only the target ran
    status = sh(["dvc", "status", "reference/dvc.yaml"], dst, env).stdout
    assert "run@tiny.meta_iada.s0" in status and "run@tiny.ce.s0" not in status, status
    again = sh(["dvc", "repro", ce], dst, env, timeout=600).stdout
    assert "Running stage" not in again, again  # finished: skipped
    sh(["dvc", "repro", meta], dst, env, timeout=600)
    assert "run@" not in sh(["dvc", "status", "reference/dvc.yaml"], dst, env).stdout  # (its report is stale)

    # A hyperparameter of meta_iada: the generated file is now behind, and DVC stops at the sync
    # stage with the one line that says how to mend it, before any run.
    raw = raw_params(TWO_RUNS)
    raw["methods"]["meta_iada"]["alpha"] = 0.25
    for name, text in params_files(raw).items():
        (dst / name).write_text(text)
    proc = subprocess.run(["dvc", "repro", ce], cwd=dst, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0 and "run `python -m pipeline.stages.reference_sync` and commit it" in proc.stderr, (
        proc.stdout + proc.stderr)
    assert "Running stage 'reference/dvc.yaml:run" not in proc.stdout
    sh(["python", "-m", "pipeline.stages.reference_sync"], dst, env)
    sh(["dvc", "repro", "reference/dvc.yaml:sync"], dst, env)
    status = sh(["dvc", "status", "reference/dvc.yaml"], dst, env).stdout
    assert "run@tiny.meta_iada.s0" in status and "changed command" in status, status
    assert "run@tiny.ce.s0" not in status, status  # ce's configuration did not change
