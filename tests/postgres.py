"""A throw-away PostgreSQL server for tests: Debian's ``postgresql`` binaries, ``initdb`` in a
temporary folder, ``pg_ctl`` on a free 127.0.0.1 port, run as a non-root user (PostgreSQL refuses
root), stopped and deleted at the end.

Skipped only where the server binaries are absent, and never where ``REQUIRE_ENV`` is set
(``.ci/run`` sets it and installs the package): there a missing server is a failure."""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

REQUIRE_ENV = "PIPELINE_TEST_REQUIRE_POSTGRES"
USER = "postgres"  # Debian's package creates this system user; used when the tests run as root


def server_bin() -> Path | None:
    """The folder of ``initdb`` and ``pg_ctl``: on PATH, or Debian's /usr/lib/postgresql/<version>/bin."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    return Path(versions[-1]).parent if versions else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """A running server; yields the SQLAlchemy URL of its ``postgres`` database (user ``optuna``)."""
    bindir = server_bin()
    if bindir is None:
        if os.environ.get(REQUIRE_ENV):
            pytest.fail(f"{REQUIRE_ENV} is set but no PostgreSQL server is installed (apt-get install postgresql)")
        pytest.skip("no PostgreSQL server installed (Debian: apt-get install postgresql)")
    as_user: list[str] = []
    data = Path(tempfile.mkdtemp(prefix="pipeline-pg-"))  # not under pytest's root-only tmp folder
    if os.geteuid() == 0:
        user = pwd.getpwnam(USER)
        os.chown(data, user.pw_uid, user.pw_gid)
        as_user = ["runuser", "-u", USER, "--"]
    port = free_port()
    ctl = [*as_user, str(bindir / "pg_ctl"), "-D", str(data / "db")]
    try:
        subprocess.run([*as_user, str(bindir / "initdb"), "-D", str(data / "db"), "-U", "optuna", "--auth=trust",
                        "--no-sync", "-E", "UTF8"], check=True, capture_output=True, text=True)
        options = f"-p {port} -k {data} -c listen_addresses=127.0.0.1 -c fsync=off"
        started = subprocess.run([*ctl, "-l", str(data / "log"), "-w", "-o", options, "start"],
                                 capture_output=True, text=True)
        if started.returncode != 0:
            log = (data / "log").read_text() if (data / "log").exists() else ""
            pytest.fail(f"pg_ctl start failed: {started.stderr}{log}")
        yield f"postgresql://optuna@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*ctl, "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(data, ignore_errors=True)
