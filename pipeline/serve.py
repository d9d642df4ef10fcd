"""``make ui`` / ``make server`` / ``make dashboard``: the MLflow UI, an MLflow tracking server
or optuna-dashboard on 127.0.0.1.

Checks first what would otherwise fail inside a server's log (and let ``make`` exit 0): a port
already in use, for the tracking server a backend URL that is malformed, lacks its driver or
cannot be reached, and for the dashboard a study store that does not exist yet (opening it
would create an empty ``optuna.db``). Then it replaces itself with the server process.

    python -m pipeline.serve ui [--port 5000]
    python -m pipeline.serve server [--port 5050] [--backend URL] [--artifacts DIR]
    python -m pipeline.serve dashboard [--port 8080] [--storage URL]

The tracking server keeps runs and the model registry in a database (``--backend``, else
``$MLFLOW_BACKEND_STORE_URI``: SQLite ``mlflow-server/mlflow.db`` by default, or e.g.
``postgresql://user:password@host/db``) and proxies artifacts into ``--artifacts`` (default
``mlflow-server/artifacts``): clients that set ``MLFLOW_TRACKING_URI=http://127.0.0.1:PORT`` need
no access to either. The backend URL reaches ``mlflow server`` in its environment
(``MLFLOW_BACKEND_STORE_URI``), not on its command line, which every local user can read in
``/proc``; what is printed shows it with its password masked. A password is safest in the
environment variable (``make server BACKEND=...`` passes it so) rather than in ``--backend``.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from pathlib import Path

from pipeline.errors import UserError, masked
from pipeline.layout import project_root

HOST = "127.0.0.1"
DEFAULT_PORTS = {"ui": 5000, "server": 5050, "dashboard": 8080}
SERVER_DIR = "mlflow-server"  # the tracking server's default store, under the project root
BACKEND_ENV = "MLFLOW_BACKEND_STORE_URI"  # mlflow server's --backend-store-uri, read from its environment


class ServeError(UserError):
    """Something the user can fix before a server starts."""


def check_port(port: int, kind: str = "ui") -> None:
    """The port must be free on 127.0.0.1 (bound and released at once). Like the servers, the
    check allows the port's TIME_WAIT connections left by a server stopped a minute ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            raise ServeError(f"port {port} on {HOST} is in use (another `make ui`, `make server` or "
                             f"`make dashboard`?): stop that server or choose another port, e.g. "
                             f"make {kind} PORT={port + 1}") from None


def check_backend(url: str) -> None:
    """The tracking server's backend must be a database URL whose driver is installed and which
    accepts a connection (a new SQLite file is created, as the server would)."""
    import sqlalchemy
    import sqlalchemy.exc

    shown = masked(url)
    try:
        parsed = sqlalchemy.engine.make_url(url)
    except (sqlalchemy.exc.ArgumentError, ValueError):  # ValueError: a port that is not a number
        raise ServeError(f"BACKEND {shown!r} is not a database URL: give e.g. sqlite:////abs/path/mlflow.db or "
                         "postgresql://user:password@host:5432/mlflow") from None
    args = {"connect_timeout": 5} if parsed.get_backend_name() == "postgresql" else {}
    try:
        engine = sqlalchemy.create_engine(parsed, connect_args=args)
    except (sqlalchemy.exc.NoSuchModuleError, ImportError) as err:
        raise ServeError(f"BACKEND {shown}: no database driver for {parsed.drivername!r} ({err}); for PostgreSQL "
                         "give postgresql://user:password@host:5432/db (psycopg 3, in requirements.txt)") from None
    try:
        with engine.connect():
            pass
    except sqlalchemy.exc.SQLAlchemyError as err:
        first = str(getattr(err, "orig", err)).strip().splitlines()[0][:300]
        raise ServeError(f"BACKEND {shown} does not accept a connection ({first}): start the database, fix the URL, "
                         "or leave BACKEND unset for SQLite under mlflow-server/") from None
    finally:
        engine.dispose()


def command(kind: str, port: int, storage: str | None,
            artifacts: Path | None = None) -> tuple[list[str], dict[str, str]]:
    """The server's command line and environment (``storage``: the tracking server's backend,
    else ``$MLFLOW_BACKEND_STORE_URI``, passed in the environment, or the dashboard's study
    storage; ``artifacts``: the tracking server's artifact folder)."""
    bin_dir = Path(sys.executable).parent
    env = dict(os.environ)
    if kind == "server":
        env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
        default_dir = project_root() / SERVER_DIR
        default = f"sqlite:///{default_dir / 'mlflow.db'}"
        backend = storage or env.get(BACKEND_ENV) or default
        if backend == default:
            default_dir.mkdir(exist_ok=True)
        check_backend(backend)
        env[BACKEND_ENV] = backend
        destination = (artifacts or default_dir / "artifacts").resolve()
        return [str(bin_dir / "mlflow"), "server", "--serve-artifacts", "--artifacts-destination", str(destination),
                "--host", HOST, "--port", str(port), "--workers", "1"], env
    if kind == "ui":
        env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"  # starts several times faster (docs/benchmarks.md)
        from pipeline.tracking import tracking_uri  # imports mlflow: only for the UI

        uri = tracking_uri()
        return [str(bin_dir / "mlflow"), "ui", "--backend-store-uri", uri, "--host", HOST, "--port", str(port),
                "--workers", "1"], env
    from pipeline.params.tune import JOURNAL, default_storage, journal_path  # imports torch: only for the dashboard

    url = storage or default_storage()
    store, target = None, url  # the store's file, if it has one; what optuna-dashboard is given
    if url.startswith(JOURNAL):  # optuna-dashboard takes a journal file by its path
        store = journal_path(url)
        target = str(store)
    elif url.startswith("sqlite:///"):
        store = Path(url[len("sqlite:///"):])
    if store is not None and not store.is_file():
        raise ServeError(f"no study yet ({store} does not exist): run one first, e.g. "
                         "python -m pipeline.stages.tune --study lt_alpha (studies: tune.studies in params/tune.yaml)")
    return [str(bin_dir / "optuna-dashboard"), target, "--host", HOST, "--port", str(port)], env


def ui_url(port: int) -> str:
    """The MLflow UI's experiment list in its machine-learning view: MLflow 3's UI starts in its
    GenAI view (traces, judges, an overview of token usage) unless the URL asks for
    ``workflowType=machine_learning`` (its "Model training" toggle), which experiment pages then
    keep in their links."""
    return f"http://{HOST}:{port}/#/experiments?workflowType=machine_learning"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("kind", choices=sorted(DEFAULT_PORTS))
    p.add_argument("--port", type=int, default=None, help="default: 5000 (ui), 5050 (server), 8080 (dashboard)")
    p.add_argument("--storage", default=None, help="dashboard: an Optuna storage URL (default: sqlite optuna.db)")
    p.add_argument("--backend", default=None,
                   help=f"server: a database URL (default: ${BACKEND_ENV}, else sqlite {SERVER_DIR}/mlflow.db); "
                        f"one with a password is safer in ${BACKEND_ENV}, which other users cannot read")
    p.add_argument("--artifacts", type=Path, default=None,
                   help=f"server: artifact folder (default: {SERVER_DIR}/artifacts)")
    args = p.parse_args(argv)
    port = args.port or DEFAULT_PORTS[args.kind]
    if args.kind != "server" and (args.backend or args.artifacts):
        p.error("--backend and --artifacts are for the tracking server")
    try:
        check_port(port, args.kind)
        cmd, env = command(args.kind, port, args.backend if args.kind == "server" else args.storage, args.artifacts)
    except ServeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"serving on http://{HOST}:{port} ({' '.join(cmd[:2])})", file=sys.stderr, flush=True)
    if args.kind in ("ui", "server"):
        print(f"open {ui_url(port)} (the runs and charts; MLflow opens its GenAI view without workflowType)",
              file=sys.stderr, flush=True)
    if args.kind == "server":
        print(f"backend: {masked(env[BACKEND_ENV])}", file=sys.stderr, flush=True)
        print(f"log to it with: export MLFLOW_TRACKING_URI=http://{HOST}:{port}", file=sys.stderr, flush=True)
    os.execve(cmd[0], cmd, env)
    return 0  # not reached


if __name__ == "__main__":
    raise SystemExit(main())
