"""The production profile on one machine, with real processes: `make up` / `make down`.

    PostgreSQL  Dagster run/event-log/schedule storage, the MLflow backend, the catalog and serving tables
    Redis       the serving cache and rate limits (the running server, or one started here)
    Milvus      `milvus-lite server` over gRPC: exactly the MILVUS_URI code path of a Milvus cluster
    MLflow      `mlflow server` backed by PostgreSQL, artifacts served from the stack's folder
    Dagster     `dagster-webserver` and `dagster-daemon` (sensors, schedules, the run queue)
    API         `rag-serve serve`

Every process runs in its own session with its pid and log under <data-dir>/stack/; `down` stops them.
`<data-dir>/stack/env` holds the variables that point a shell at this stack (`set -a; . that file`).
"""

from __future__ import annotations

import argparse
import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SERVICES = ("milvus", "mlflow", "dagster-daemon", "dagster-webserver", "api", "metrics")


@dataclass
class Stack:
    data_dir: Path
    pg_url: str  # an admin URL on the server; the stack's databases are created next to it
    redis_url: str
    documents_dir: Path
    prefix: str
    milvus_port: int
    mlflow_port: int
    dagster_port: int
    api_port: int
    metrics_port: int

    @property
    def run_dir(self) -> Path:
        return self.data_dir / "stack"

    def database_url(self, purpose: str) -> str:
        return f"{self.pg_url.rsplit('/', 1)[0]}/{self.prefix}_{purpose}"

    def env(self) -> dict[str, str]:
        return {
            "RAG_DATA_DIR": str(self.data_dir),
            "RAG_DOCUMENTS_DIR": str(self.documents_dir),
            "DAGSTER_HOME": str(self.data_dir / "dagster"),
            "DAGSTER_PG_URL": self.database_url("dagster"),
            "MILVUS_URI": f"http://127.0.0.1:{self.milvus_port}",
            "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{self.mlflow_port}",
            "REDIS_URL": self.redis_url,
            "RAG_CATALOG_URL": self.database_url("rag"),
            "RAG_SERVING_DB_URL": self.database_url("rag"),
            "RAG_LOG_FORMAT": "json",
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
        }


class StackError(RuntimeError):
    """A precondition failed; the message names the fix."""


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _wait_http(url: str, timeout_s: float, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise StackError(f"{url} exited with code {process.returncode} — see {log}:\n{_tail(log)}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):  # not listening yet, or closed on us
            time.sleep(0.5)
        except http.client.HTTPException as error:  # an answer that is not HTTP: another program holds the port
            raise StackError(f"{url} answered with something that is not HTTP ({error!r}) — free that port") from error
    raise StackError(f"{url} did not answer within {timeout_s:.0f} s — see {log}:\n{_tail(log)}")


def _wait_port(port: int, timeout_s: float, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise StackError(f"the process for port {port} exited ({process.returncode}) — see {log}:\n{_tail(log)}")
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.3)
    raise StackError(f"nothing listens on port {port} after {timeout_s:.0f} s — see {log}")


def _tail(log: Path, lines: int = 15) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.exists() else ""


def _start(stack: Stack, name: str, command: list[str], env: dict[str, str]) -> subprocess.Popen:
    log = stack.run_dir / f"{name}.log"
    handle = log.open("ab")
    process = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
    )
    (stack.run_dir / f"{name}.pid").write_text(str(process.pid))
    return process


def _check_postgres(stack: Stack) -> None:
    import sqlalchemy as sa

    try:
        admin = sa.create_engine(stack.pg_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            existing = set(connection.execute(sa.text("SELECT datname FROM pg_database")).scalars())
            for purpose in ("dagster", "mlflow", "rag"):
                name = f"{stack.prefix}_{purpose}"
                if name not in existing:
                    connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
        admin.dispose()
    except sa.exc.OperationalError as error:
        raise StackError(
            f"PostgreSQL is not reachable at {stack.pg_url} ({str(error).splitlines()[0]}) — start it "
            "(`pg_ctlcluster <version> main start`) or pass --pg-url"
        ) from error


def _check_redis(stack: Stack, env: dict[str, str]) -> None:
    import redis

    try:
        redis.Redis.from_url(stack.redis_url, socket_connect_timeout=1).ping()
        return
    except redis.exceptions.ConnectionError:
        pass
    server = shutil.which("redis-server")
    port = int(stack.redis_url.rsplit(":", 1)[1].split("/")[0])
    if server is None:
        raise StackError(
            f"Redis is not reachable at {stack.redis_url} and redis-server is not installed — install it "
            "(`apt-get install redis-server`) or pass --redis-url"
        )
    process = _start(stack, "redis", [server, "--port", str(port), "--bind", "127.0.0.1", "--save", ""], env)
    _wait_port(port, 15, process, stack.run_dir / "redis.log")


def up(stack: Stack) -> dict[str, str]:
    stack.run_dir.mkdir(parents=True, exist_ok=True)
    if any((stack.run_dir / f"{name}.pid").exists() for name in SERVICES):
        raise StackError(f"a stack is already running from {stack.run_dir} — `make down` first")
    ports = {
        "Milvus": stack.milvus_port,
        "MLflow": stack.mlflow_port,
        "Dagster webserver": stack.dagster_port,
        "API": stack.api_port,
        "metrics": stack.metrics_port,
    }
    if len(set(ports.values())) < len(ports):
        raise StackError(f"two services were given the same port ({ports}) — choose distinct ports")
    busy = [f"{name} port {port}" for name, port in ports.items() if not _port_free(port)]
    if busy:
        raise StackError(
            f"{', '.join(busy)} already in use — stop what holds it, or choose other ports "
            "(--milvus-port, --mlflow-port, --dagster-port, --api-port, --metrics-port)"
        )
    env = {**os.environ, **stack.env()}
    _check_postgres(stack)
    _check_redis(stack, env)
    home = Path(env["DAGSTER_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(ROOT / "infra" / "dagster.yaml", home / "dagster.yaml")  # PostgreSQL storage, the run queue
    (stack.run_dir / "env").write_text("".join(f"{key}={value}\n" for key, value in stack.env().items()))
    try:
        milvus = _start(
            stack,
            "milvus",
            [str(BIN / "milvus-lite"), "server", "--data-dir", str(stack.data_dir / "milvus.db"),
             "--host", "127.0.0.1", "--port", str(stack.milvus_port)],
            env,
        )
        mlflow = _start(
            stack,
            "mlflow",
            [str(BIN / "mlflow"), "server", "--backend-store-uri", stack.database_url("mlflow"),
             "--artifacts-destination", str(stack.data_dir / "mlartifacts"), "--host", "127.0.0.1",
             "--port", str(stack.mlflow_port), "--workers", "1"],
            {**env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},  # no GenAI job runners: tracking only
        )
        workspace = str(ROOT / "workspace.yaml")
        daemon = _start(stack, "dagster-daemon", [str(BIN / "dagster-daemon"), "run", "-w", workspace], env)
        webserver = _start(
            stack,
            "dagster-webserver",
            [str(BIN / "dagster-webserver"), "-w", workspace, "-h", "127.0.0.1", "-p", str(stack.dagster_port)],
            env,
        )
        api = _start(
            stack, "api", [str(BIN / "rag-serve"), "serve", "--host", "127.0.0.1", "--port", str(stack.api_port)], env
        )
        metrics = _start(stack, "metrics", [str(BIN / "rag"), "metrics", "--port", str(stack.metrics_port)], env)
        _wait_port(stack.milvus_port, 60, milvus, stack.run_dir / "milvus.log")
        _wait_http(f"http://127.0.0.1:{stack.mlflow_port}/health", 120, mlflow, stack.run_dir / "mlflow.log")
        webserver_log = stack.run_dir / "dagster-webserver.log"
        _wait_http(f"http://127.0.0.1:{stack.dagster_port}/server_info", 180, webserver, webserver_log)
        _wait_http(f"http://127.0.0.1:{stack.api_port}/health", 180, api, stack.run_dir / "api.log")
        _wait_http(f"http://127.0.0.1:{stack.metrics_port}/metrics", 60, metrics, stack.run_dir / "metrics.log")
        if daemon.poll() is not None:
            raise StackError(f"dagster-daemon exited — see {stack.run_dir / 'dagster-daemon.log'}")
    except BaseException:
        down(stack)
        raise
    return {
        "Dagster UI": f"http://127.0.0.1:{stack.dagster_port}",
        "MLflow UI": f"http://127.0.0.1:{stack.mlflow_port}",
        "API": f"http://127.0.0.1:{stack.api_port}  (OpenAPI at /docs)",
        "Milvus": stack.env()["MILVUS_URI"],
        "metrics": f"http://127.0.0.1:{stack.api_port}/metrics (API), "
        f"http://127.0.0.1:{stack.metrics_port}/metrics (index, Dagster)",
        "logs": str(stack.run_dir),
        "env": f"set -a; . {stack.run_dir / 'env'}; set +a",
    }


def down(stack: Stack, timeout_s: float = 20.0) -> list[str]:
    stopped = []
    for name in (*reversed(SERVICES), "redis"):
        pid_file = stack.run_dir / f"{name}.pid"
        if not pid_file.exists():
            continue
        pid = int(pid_file.read_text())
        try:
            os.killpg(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                os.killpg(pid, 0)
                time.sleep(0.2)
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        pid_file.unlink()
        stopped.append(name)
    return stopped


def left_in_place(stack: Stack) -> list[str]:
    """What `down` keeps, so a later `up` finds the same history, models and keys, and how to remove it."""
    server = stack.pg_url.rsplit("/", 1)[0]
    databases = [f"{stack.prefix}_{purpose}" for purpose in ("dagster", "mlflow", "rag")]
    return [
        f"PostgreSQL databases {', '.join(databases)} on {server} (Dagster runs, MLflow runs and registered "
        f"models, the catalog, query log, feedback and API keys) — drop them with "
        + "; ".join(f"`dropdb --maintenance-db={stack.pg_url} {name}`" for name in databases),
        f"{stack.data_dir} (the Milvus data, MLflow artifacts, the search index and the process logs) — "
        f"remove it with `rm -rf {stack.data_dir}`",
        f"the cache and rate-limit keys in Redis at {stack.redis_url} (they expire by themselves)",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["up", "down"])
    parser.add_argument("--data-dir", type=Path, default=Path(".rag_stack"))
    parser.add_argument("--pg-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--documents-dir", type=Path, default=Path("data/sample"))
    parser.add_argument("--prefix", default="rag", help="the stack's databases are <prefix>_dagster, _mlflow, _rag")
    parser.add_argument("--milvus-port", type=int, default=19530)
    parser.add_argument("--mlflow-port", type=int, default=5000)
    parser.add_argument("--dagster-port", type=int, default=3000)
    parser.add_argument("--api-port", type=int, default=8000)
    parser.add_argument("--metrics-port", type=int, default=9108)
    args = parser.parse_args(argv)
    stack = Stack(
        args.data_dir.resolve(),
        args.pg_url,
        args.redis_url,
        args.documents_dir.resolve(),
        args.prefix,
        args.milvus_port,
        args.mlflow_port,
        args.dagster_port,
        args.api_port,
        args.metrics_port,
    )
    try:
        if args.command == "up":
            for name, where in up(stack).items():
                print(f"{name:>12}: {where}")
        else:
            print("stopped: " + (", ".join(down(stack)) or "nothing was running"))
            print("left in place:\n" + "\n".join(f"  - {item}" for item in left_in_place(stack)))
    except StackError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
