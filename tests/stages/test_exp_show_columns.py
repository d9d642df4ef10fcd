"""``dvc exp show`` of the committed pipeline stays readable: DVC prints a column for every leaf of
params.yaml (its default params file), for each key a stage tracks in another params file, and for
every dependency and metric; the experiments that ``dvc repro`` does not run, the studies and the
reference sweep are files of params/ that stages depend on as files (one column each)."""

from __future__ import annotations

import csv
import io
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from tests.test_e2e import sh

ROOT = Path(__file__).resolve().parents[2]


def committed_copy(dst: Path) -> dict:
    """A git copy of the project's files as they stand (without the DVC outputs of data/ and
    models/), committed, as on a clone; returns the environment to run dvc in it."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split("\0")
    for f in filter(None, files):
        if (ROOT / f).is_file() and not f.startswith(("data/", "models/")):
            (dst / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, dst / f)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1",
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    env.pop("DVC_ROOT", None)
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "copy"]):
        sh(cmd, dst, env)
    return env


def test_dvc_exp_show_of_the_committed_pipeline_prints_no_leaf_of_the_files_of_params(tmp_path):
    env = committed_copy(tmp_path)
    header = next(csv.reader(io.StringIO(sh(["dvc", "exp", "show", "--csv"], tmp_path, env).stdout)))
    leaves = [c for c in header if re.match(r"(params/\w+\.yaml:)?(tune|reference)\.|experiments\.(?!lt\.)", c)]
    assert leaves == [], f"{len(leaves)} of {len(header)} columns: {leaves[:5]} ..."
    assert len(header) <= 200, f"dvc exp show --csv prints {len(header)} columns (issue 32.6: at most 200)"
    assert {c for c in header if c.startswith("params/")} <= {f"params/{p.name}" for p in (ROOT / "params").iterdir()}
