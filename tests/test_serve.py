"""`make ui` / `make server` / `make dashboard` (pipeline.serve): a real server on 127.0.0.1, one
line for a taken port, a bad tracking-server backend or a missing study store (the tracking
server end to end: tests/test_server.py)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from pipeline import serve
from pipeline.errors import masked

ROOT = Path(__file__).resolve().parents[1]
SECRET_URL = "postgresql://me:s3cr$t'@127.0.0.1:5432/mlflow"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def no_exec(monkeypatch) -> list:
    """Record instead of replacing the test process with a server."""
    calls: list = []
    monkeypatch.setattr(serve.os, "execve", lambda *args: calls.append(args))
    return calls


@pytest.mark.parametrize("kind", ["ui", "server"])
def test_a_port_in_use_is_one_line_and_exit_2(kind, tmp_path, capsys, monkeypatch):
    execs = no_exec(monkeypatch)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert serve.main([kind, "--port", str(port)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: port {port} on 127.0.0.1 is in use")
    assert f"make {kind} PORT={port + 1}" in err[0]
    assert execs == [] and list(tmp_path.iterdir()) == []


def test_a_port_a_stopped_server_left_in_time_wait_is_free(monkeypatch):
    """A server stopped seconds ago leaves its accepted connections in TIME_WAIT for a minute; the
    next `make server` on that port must start (the server itself binds with SO_REUSEADDR)."""
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        conn, _ = server.accept()
        conn.close()  # the server side closes first: its end (our port) goes to TIME_WAIT
        time.sleep(0.2)
        client.close()
    time.sleep(0.2)
    serve.check_port(port)  # does not raise


@pytest.mark.parametrize("backend, says", [
    ("mlflow.db", "BACKEND 'mlflow.db' is not a database URL"),
    ("postgresql+nosuchdriver://me:secret@127.0.0.1:5432/mlflow",
     "BACKEND postgresql+nosuchdriver://me:***@127.0.0.1:5432/mlflow: no database driver"),
    ("sqlite:///{tmp}/missing/mlflow.db", "BACKEND sqlite:///{tmp}/missing/mlflow.db does not accept a connection"),
    ("postgresql://me:secret@127.0.0.1:port/mlflow",
     "BACKEND 'postgresql://me:***@127.0.0.1:port/mlflow' is not a database URL"),
])
def test_a_bad_tracking_server_backend_is_one_line_before_the_server_starts(backend, says, tmp_path, capsys,
                                                                            monkeypatch):
    execs = no_exec(monkeypatch)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    backend, says = backend.format(tmp=tmp_path), says.format(tmp=tmp_path)
    assert serve.main(["server", "--port", str(free_port()), "--backend", backend]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {says}"), err
    assert "secret" not in err[0] and execs == [] and list(tmp_path.iterdir()) == []


def test_the_tracking_server_binds_to_loopback_with_its_backend_and_proxied_artifacts(tmp_path, monkeypatch):
    execs = no_exec(monkeypatch)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    port = free_port()
    assert serve.main(["server", "--port", str(port), "--artifacts", "art"]) == 0
    (path, argv, env), = execs
    assert argv[1] == "server" and path.endswith("/mlflow")
    assert env["MLFLOW_BACKEND_STORE_URI"] == f"sqlite:///{tmp_path / 'mlflow-server' / 'mlflow.db'}"
    flags = dict(zip(argv[2:], argv[3:]))
    assert "--serve-artifacts" in argv and flags["--artifacts-destination"] == str(Path.cwd() / "art")
    assert (flags["--host"], flags["--port"]) == ("127.0.0.1", str(port))
    assert env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"


@pytest.mark.parametrize("url, shown", [
    ("postgresql://user:secret@host/db", "postgresql://user:***@host/db"),
    ("postgresql+psycopg://user:secret@host:5432/db", "postgresql+psycopg://user:***@host:5432/db"),
    ("postgresql://user:se:c@r/et@host:notaport/db", "postgresql://user:***@host:notaport/db"),
    ("postgresql://:secret@host/db", "postgresql://:***@host/db"),
    ("postgresql://host/db?user=u&password=secret&sslmode=require",
     "postgresql://host/db?user=u&password=***&sslmode=require"),
    ("postgresql://user@host:5432/db", "postgresql://user@host:5432/db"),
    ("sqlite:////abs/mlflow.db", "sqlite:////abs/mlflow.db"),
    ("journal:/abs/optuna.journal", "journal:/abs/optuna.journal"),
])
def test_masked_hides_a_urls_password_and_nothing_else(url, shown):
    assert masked(url) == shown


@pytest.mark.parametrize("given", ["--backend", "environment"])
def test_a_backend_password_reaches_mlflow_server_in_its_environment_never_on_a_command_line(
        given, tmp_path, monkeypatch, capsys):
    """Every local user can read a process's command line in /proc (not its environment)."""
    execs = no_exec(monkeypatch)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.setattr(serve, "check_backend", lambda url: None)  # no PostgreSQL server here
    if given == "environment":
        monkeypatch.setenv("MLFLOW_BACKEND_STORE_URI", SECRET_URL)
    backend = ["--backend", SECRET_URL] if given == "--backend" else []
    assert serve.main(["server", "--port", str(free_port()), *backend]) == 0
    (path, argv, env), = execs
    assert not any("s3cr" in arg for arg in argv) and env["MLFLOW_BACKEND_STORE_URI"] == SECRET_URL
    printed = capsys.readouterr()
    assert "backend: postgresql://me:***@127.0.0.1:5432/mlflow" in printed.err
    assert "s3cr" not in printed.out + printed.err


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
@pytest.mark.parametrize("target, variable, env_name", [
    ("server", "BACKEND", "MLFLOW_BACKEND_STORE_URI"),
    ("tune", "STORAGE", "META_IADA_STORAGE"),
])
def test_make_passes_a_store_url_in_the_environment_and_echoes_no_password(target, variable, env_name, tmp_path):
    """``make server BACKEND=...`` / ``make tune STORAGE=...``: make echoes each recipe line; the
    URL must reach the command (a stand-in for .venv/bin/python) whole, "$" and "'" included."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    fake = venv / "bin" / "python"
    fake.write_text(f'#!/bin/sh\nprintf "argv: %s\\n" "$*" >> {tmp_path}/calls\n'
                    f'printf "env: %s\\n" "${env_name}" >> {tmp_path}/calls\n')
    fake.chmod(0o755)
    (venv / ".installed").touch()  # the install stamp: no pip
    proc = subprocess.run(["make", "-C", str(ROOT), target, f"VENV={venv}", f"{variable}={SECRET_URL}"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "s3cr" not in proc.stdout + proc.stderr
    calls = (tmp_path / "calls").read_text().splitlines()
    assert calls[1] == f"env: {SECRET_URL}" and "s3cr" not in calls[0], calls


def test_dashboard_before_any_study_says_so_and_creates_no_store(tmp_path, monkeypatch, capsys):
    execs = no_exec(monkeypatch)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    assert serve.main(["dashboard", "--port", str(free_port())]) == 2
    assert capsys.readouterr().err.startswith("error: no study yet")
    assert not (tmp_path / "optuna.db").exists() and execs == []


def test_dashboard_opens_a_journal_storage_by_its_file(tmp_path, monkeypatch, capsys):
    """A journal:PATH storage (PATH from the project root, as the studies resolve it) reaches
    optuna-dashboard as the file, which the dashboard's own reader opens as a journal with the
    study in it; a journal that does not exist yet says so, like a missing optuna.db."""
    import optuna
    from optuna.storages.journal import JournalFileBackend
    from optuna_dashboard._storage_url import get_storage

    execs = no_exec(monkeypatch)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    assert serve.main(["dashboard", "--port", str(free_port()), "--storage", "journal:studies.journal"]) == 2
    assert capsys.readouterr().err.startswith("error: no study yet") and execs == []
    journal = tmp_path / "studies.journal"
    optuna.create_study(study_name="s", storage=optuna.storages.JournalStorage(JournalFileBackend(str(journal))))
    serve.main(["dashboard", "--port", str(free_port()), "--storage", "journal:studies.journal"])
    argv = execs[0][1]
    assert argv[1] == str(journal) and argv[argv.index("--host") + 1] == "127.0.0.1"
    assert [s.study_name for s in get_storage(argv[1]).get_all_studies()] == ["s"]


def test_ui_serves_the_store_on_loopback(tmp_path):
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.serve", "ui", "--port", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline, status = time.monotonic() + 90, None
        while time.monotonic() < deadline and status is None:
            try:
                status = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2).status
            except OSError:
                assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
                time.sleep(0.5)
        assert status == 200
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)
    # the URL it prints opens the machine-learning view (MLflow 3 starts in its GenAI view)
    said = proc.stderr.read().decode()
    assert f"open http://127.0.0.1:{port}/#/experiments?workflowType=machine_learning" in said, said
