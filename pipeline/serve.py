"""``make ui`` / ``make dashboard``: the MLflow UI or optuna-dashboard on 127.0.0.1.

Checks first what would otherwise fail inside a server's log (and let ``make`` exit 0): a port
already in use, and for the dashboard a study store that does not exist yet (opening it would
create an empty ``optuna.db``). Then it replaces itself with the server process.

    python -m pipeline.serve ui [--port 5000]
    python -m pipeline.serve dashboard [--port 8080] [--storage URL]
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from pathlib import Path

from pipeline.errors import UserError
from pipeline.layout import project_root

HOST = "127.0.0.1"
DEFAULT_PORTS = {"ui": 5000, "dashboard": 8080}


class ServeError(UserError):
    """Something the user can fix before a server starts."""


def check_port(port: int) -> None:
    """The port must be free on 127.0.0.1 (bound and released at once)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            raise ServeError(f"port {port} on {HOST} is in use (another `make ui` or `make dashboard`?): stop that "
                             f"server or choose another port, e.g. make ui PORT={port + 1}") from None


def command(kind: str, port: int, storage: str | None) -> tuple[list[str], dict[str, str]]:
    """The server's command line and environment."""
    bin_dir = Path(sys.executable).parent
    env = dict(os.environ)
    if kind == "ui":
        env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"  # starts several times faster (docs/benchmarks.md)
        from pipeline.tracking import tracking_uri  # imports mlflow: only for the UI

        uri = tracking_uri()
        return [str(bin_dir / "mlflow"), "ui", "--backend-store-uri", uri, "--host", HOST, "--port", str(port),
                "--workers", "1"], env
    url = storage or f"sqlite:///{project_root() / 'optuna.db'}"
    if url.startswith("sqlite:///") and not Path(url[len("sqlite:///"):]).is_file():
        raise ServeError(f"no study yet ({url[len('sqlite:///'):]} does not exist): run one first, e.g. "
                         "python -m pipeline.stages.tune --study lt_alpha (studies: tune.studies in params.yaml)")
    return [str(bin_dir / "optuna-dashboard"), url, "--host", HOST, "--port", str(port)], env


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("kind", choices=sorted(DEFAULT_PORTS))
    p.add_argument("--port", type=int, default=None, help="default: 5000 (ui), 8080 (dashboard)")
    p.add_argument("--storage", default=None, help="dashboard: an Optuna storage URL (default: sqlite optuna.db)")
    args = p.parse_args(argv)
    port = args.port or DEFAULT_PORTS[args.kind]
    try:
        check_port(port)
        cmd, env = command(args.kind, port, args.storage)
    except ServeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"serving on http://{HOST}:{port} ({' '.join(cmd[:2])})", file=sys.stderr, flush=True)
    os.execve(cmd[0], cmd, env)
    return 0  # not reached


if __name__ == "__main__":
    raise SystemExit(main())
