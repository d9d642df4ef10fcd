"""`make ui` / `make dashboard` (pipeline.serve): a real server on 127.0.0.1, one line for a taken
port or a missing study store."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request

from pipeline import serve


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def no_exec(monkeypatch) -> list:
    """Record instead of replacing the test process with a server."""
    calls: list = []
    monkeypatch.setattr(serve.os, "execve", lambda *args: calls.append(args))
    return calls


def test_a_port_in_use_is_one_line_and_exit_2(capsys, monkeypatch):
    execs = no_exec(monkeypatch)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert serve.main(["ui", "--port", str(port)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: port {port} on 127.0.0.1 is in use") and "PORT=" in err[0]
    assert execs == []


def test_dashboard_before_any_study_says_so_and_creates_no_store(tmp_path, monkeypatch, capsys):
    execs = no_exec(monkeypatch)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    assert serve.main(["dashboard", "--port", str(free_port())]) == 2
    assert capsys.readouterr().err.startswith("error: no study yet")
    assert not (tmp_path / "optuna.db").exists() and execs == []


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
