"""The production profile as real processes (`make up`): Dagster webserver + daemon on PostgreSQL storage,
an MLflow server on PostgreSQL, `milvus-lite server` as the Milvus endpoint, Redis, the API and the
metrics exporter. The daemon's sensor — not the test — launches the runs that index and un-index a file.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from tests.conftest import FIXTURES, POSTGRES_URL, REDIS_URL, service_missing

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
sys.path.insert(0, str(ROOT / "scripts"))
import stack  # noqa: E402


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """Distinct free ports: every probe stays bound until all are picked, so no port is handed out twice (a
    Milvus and an MLflow on one port made MLflow's health check read Milvus's HTTP/2 bytes)."""
    probes = [socket.socket() for _ in range(count)]
    try:
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [probe.getsockname()[1] for probe in probes]
    finally:
        for probe in probes:
            probe.close()


def dagster_progress(dagster_db_url: str) -> Callable[[], int]:
    """How far the stack's Dagster runs have got: the newest event-log id. It moves while any run is
    launched, steps or logs, and stands still when nothing works (sensor ticks are not events)."""
    engine = sa.create_engine(dagster_db_url)

    def progress() -> int:
        with engine.connect() as connection:
            return connection.execute(sa.text("SELECT coalesce(max(id), 0) FROM event_logs")).scalar()

    return progress


def wait_while_working(what: str, check, progress: Callable[[], int], idle_s: float, every_s: float = 3.0):
    """The first truthy result of `check`. No fixed budget: a busy machine gets the time its runs take, and
    the wait fails once `progress` stood still for `idle_s` (nothing left working to make `check` true)."""
    last, seen = None, progress()
    idle_since = time.monotonic()
    while True:
        try:
            last = check()
            if last:
                return last
        except (httpx.HTTPError, KeyError, ValueError) as error:
            last = error
        now = progress()
        if now != seen:
            seen, idle_since = now, time.monotonic()
        elif time.monotonic() - idle_since > idle_s:
            raise AssertionError(f"{what}: no Dagster progress for {idle_s:.0f} s (last: {last!r})")
        time.sleep(every_s)


def test_one_port_for_two_services_is_refused(tmp_path: Path) -> None:
    milvus, other, api, metrics = free_ports(4)
    config = stack.Stack(tmp_path, POSTGRES_URL, REDIS_URL, tmp_path, "unused", milvus, milvus, other, api, metrics)
    with pytest.raises(stack.StackError, match="two services were given the same port"):
        stack.up(config)


def test_a_busy_port_is_refused_with_the_fix(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        busy = holder.getsockname()[1]
        config = stack.Stack(
            tmp_path, POSTGRES_URL, REDIS_URL, tmp_path, "unused", *free_ports(3), busy, free_port(),
        )
        with pytest.raises(stack.StackError, match=f"API port {busy} already in use .* --api-port"):
            stack.up(config)


@pytest.fixture
def production(tmp_path: Path, postgres_admin_url: str) -> Iterator[dict]:
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1).ping()
    except redis.exceptions.ConnectionError:
        service_missing("Redis is not reachable at 127.0.0.1:6379 — start redis-server")
    documents = tmp_path / "documents"
    documents.mkdir()
    for name in ("abstracts.jsonl", "getting-started.md"):
        shutil.copy(FIXTURES / "corpus" / name, documents / name)
    prefix = f"ragstack_{uuid.uuid4().hex[:8]}"
    ports = dict(zip(("milvus", "mlflow", "dagster", "api", "metrics"), free_ports(5), strict=True))
    data_dir = tmp_path / "stack"
    command = [
        sys.executable, str(ROOT / "scripts" / "stack.py"), "--data-dir", str(data_dir), "--pg-url",
        postgres_admin_url, "--redis-url", REDIS_URL, "--documents-dir", str(documents), "--prefix", prefix,
        *[arg for name, port in ports.items() for arg in (f"--{name}-port", str(port))],
    ]
    # Both fixture files arrive in one sensor tick: one batched run instead of one run each.
    env = {**os.environ, "RAG_SENSOR_BATCH_THRESHOLD": "1", "RAG_RAG_EVAL_QUERIES": "3"}
    started = subprocess.run([*command[:2], "up", *command[2:]], env=env, capture_output=True, text=True, timeout=400)
    assert started.returncode == 0, started.stderr + started.stdout
    settings_env = dict(line.split("=", 1) for line in (data_dir / "stack" / "env").read_text().splitlines())
    try:
        yield {"ports": ports, "documents": documents, "env": {**env, **settings_env}, "run_dir": data_dir / "stack"}
    finally:
        stopped = subprocess.run([*command[:2], "down", *command[2:]], env=env, capture_output=True, text=True)
        assert stopped.returncode == 0, stopped.stderr
        for pid_file in (data_dir / "stack").glob("*.pid"):
            raise AssertionError(f"{pid_file} left behind")
        admin = sa.create_engine(postgres_admin_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            for purpose in ("dagster", "mlflow", "rag"):
                connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{prefix}_{purpose}" WITH (FORCE)'))
        admin.dispose()


# The waits below end on what the daemon's runs achieve, or after IDLE_S with no run making progress;
# the timeout is only a backstop against a run that progresses forever.
IDLE_S = 300


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.timeout(3600)
def test_the_daemon_indexes_and_unindexes_a_dropped_file_and_mlflow_gets_the_eval(production: dict) -> None:
    env, ports = production["env"], production["ports"]
    progress = dagster_progress(env["DAGSTER_PG_URL"])
    created = [str(BIN / "rag-serve"), "create-key", "--tenant", "default"]
    key = subprocess.run(created, env=env, capture_output=True, text=True, check=True).stdout.strip()
    api = httpx.Client(base_url=f"http://127.0.0.1:{ports['api']}", headers={"X-API-Key": key}, timeout=30)

    # The sensor in the daemon finds the folder, launches the batched run; the API becomes ready.
    wait_while_working(
        "the API serving the first build", lambda: api.get("/ready").status_code == 200, progress, IDLE_S, 5
    )

    def sources(query: str) -> set[str]:
        response = api.post("/v1/retrieve", json={"query": query, "mode": "bm25", "top_k": 10})
        response.raise_for_status()
        return {chunk["source"] for chunk in response.json()["chunks"]}

    (production["documents"] / "zebra-migration.md").write_text(
        "# Zebra migration\n\nEvery year the zebra herds of the Serengeti cross the Mara river, "
        "following the rains towards fresh grazing."
    )
    wait_while_working(
        "the dropped file answered by the API",
        lambda: "zebra-migration.md" in sources("zebra Mara river"),
        progress,
        IDLE_S,
    )
    answer = api.post("/v1/query", json={"query": "Which river do the zebra herds cross?", "stream": False}).json()
    assert "Mara" in answer["answer"] and any(s["source"] == "zebra-migration.md" for s in answer["sources"])

    # Every index change is evaluated: the eval run lands in the MLflow server.
    from mlflow import MlflowClient

    mlflow = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])

    def evaluated_modes() -> set[str]:
        experiment = mlflow.get_experiment_by_name("retrieval")
        runs = mlflow.search_runs([experiment.experiment_id]) if experiment else []
        modes = {run.data.params["mode"] for run in runs if run.data.params.get("mode")}
        return modes if modes >= {"bm25", "dense", "hybrid"} else set()

    wait_while_working("the evaluation runs (one per mode) in MLflow", evaluated_modes, progress, IDLE_S, 5)

    (production["documents"] / "zebra-migration.md").unlink()
    wait_while_working(
        "the deleted file's chunks gone",
        lambda: "zebra-migration.md" not in sources("zebra Mara river"),
        progress,
        IDLE_S,
    )

    metrics = httpx.get(f"http://127.0.0.1:{ports['metrics']}/metrics").text
    values = {
        line.split(" ")[0].split("{")[0]: float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("rag_")
    }
    assert values["rag_index_up"] == 1.0 and values["rag_index_rows"] > 0
    assert time.time() - values["rag_index_last_success_timestamp_seconds"] < 3600
    assert "rag_dagster_failed_runs_total" in values

    # Structured logs: one JSON object per line, each request with its id.
    lines = [json.loads(line) for line in (production["run_dir"] / "api.log").read_text().splitlines()
             if line.startswith("{")]
    assert any(line.get("request_id") and line.get("route") == "/v1/retrieve" for line in lines)


def test_an_unreachable_postgres_is_refused_with_the_fix(tmp_path: Path) -> None:
    config = stack.Stack(
        tmp_path, f"postgresql://postgres@127.0.0.1:{free_port()}/postgres", REDIS_URL, tmp_path,
        "unused", free_port(), free_port(), free_port(), free_port(), free_port(),
    )
    with pytest.raises(stack.StackError, match=r"PostgreSQL is not reachable .*pg_ctlcluster.* or pass --pg-url"):
        stack.up(config)
    assert not list((tmp_path / "stack").glob("*.pid"))  # nothing was left running
