"""Faults under steady load: client threads keep calling /v1/retrieve while a dependency goes away and comes
back — Milvus (`milvus-lite server` killed with kill -9, then restarted), Redis and PostgreSQL (throw-away
servers of the test's own). While a dependency is down the API answers 200 or 503 with Retry-After, never a
500 or a dropped connection; once it is back, successes resume by themselves. Each test prints its counts
per status and its recovery times (`pytest -s`)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from dagster import instance_for_test

from rag_assets.cli import index
from rag_core.querylog import ServingDatabase
from rag_core.settings import Settings
from rag_core.store import IndexBuild, MilvusStore, MilvusUnavailable, milvus_client
from rag_serving.app import create_app
from tests.conftest import FIXTURES, service_missing
from tests.serving_server import RedisProcess, ServerThread, free_port
from tests.support.waiting import wait_for

pytestmark = pytest.mark.slow
OUTAGE_S = 20.0  # how long Milvus stays down: gRPC's reconnect back-off grows with it
RECOVERY_BUDGET_S = 10.0
PAUSE_AFTER_REFUSAL_S = 0.05


# --------------------------------------------------------------------------- the dependencies


class MilvusLiteServer:
    """`milvus-lite server` on a free port; `kill()` is kill -9, `start()` brings it back on the same data."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> float:
        """Starts the server; returns when (time.monotonic()) it was started."""
        command = ["server", "--data-dir", str(self.data_dir), "--host", "127.0.0.1", "--port", str(self.port)]
        with (self.data_dir.parent / "milvus-server.log").open("a") as log:
            self.process = subprocess.Popen(
                [Path(sys.executable).with_name("milvus-lite"), *command], stdout=log, stderr=subprocess.STDOUT
            )
        return time.monotonic()

    def listening(self) -> bool:
        """The server binds its port once its data is open (milvus_lite.adapter.grpc.server.run_server)."""
        with socket.socket() as probe:
            return probe.connect_ex(("127.0.0.1", self.port)) == 0

    def kill(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()
            self.process = None


class PostgresCluster:
    """A throw-away PostgreSQL cluster (initdb + pg_ctl) on a free port, run as the `postgres` user when the
    tests run as root (PostgreSQL refuses to run as root)."""

    def __init__(self) -> None:
        found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
        if not found:
            service_missing("PostgreSQL server binaries are not installed (Debian package postgresql)")
        self.bin = found[-1].parent
        self.root = Path(tempfile.mkdtemp(prefix="rag-faults-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres")

    def _run(self, program: str, *args: str) -> None:
        command = [str(self.bin / program), *args]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True, text=True, timeout=120)

    def init(self) -> PostgresCluster:
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync")
        return self

    def start(self) -> None:
        """Returns once the server accepts connections (`pg_ctl -w`)."""
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "server.log"), "-w", "-o", options, "start")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def remove(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


# --------------------------------------------------------------------------- the load


@dataclass(frozen=True)
class Answer:
    started: float
    finished: float
    status: int | str  # the HTTP status, or the name of the transport error
    retry_after: str | None


Call = Callable[[httpx.Client, str], httpx.Response]


def retrieve(client: httpx.Client, tag: str) -> httpx.Response:
    """A question never asked before: no result cache hit, every request searches."""
    return client.post("/v1/retrieve", json={"query": f"how does the embedding cache work {tag}", "top_k": 3})


class Load:
    """One client thread per call, each calling again as soon as it has its answer (after a refusal, after
    PAUSE_AFTER_REFUSAL_S: clients spinning on 503s would mostly measure how busy they keep this machine
    while a dependency restarts), until the block ends."""

    def __init__(self, url: str, key: str, calls: list[Call]) -> None:
        self.url, self.key, self.calls = url, key, calls
        self.answers: list[Answer] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, args=(n,), daemon=True) for n in range(len(calls))]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)

    def _client(self, number: int) -> None:
        call = self.calls[number]
        with httpx.Client(base_url=self.url, headers={"X-API-Key": self.key}, timeout=60) as client:
            sent = 0
            while not self._stop.is_set():
                sent += 1
                started = time.monotonic()
                try:
                    response = call(client, f"{number}-{sent}")
                    status, retry_after = response.status_code, response.headers.get("retry-after")
                except httpx.HTTPError as error:
                    status, retry_after = type(error).__name__, None
                self.answers.append(Answer(started, time.monotonic(), status, retry_after))
                if status != 200:
                    self._stop.wait(PAUSE_AFTER_REFUSAL_S)

    def between(self, start: float, end: float = float("inf")) -> list[Answer]:
        """The answers received in [start, end)."""
        return [answer for answer in list(self.answers) if start <= answer.finished < end]

    def first_success(self, after: float) -> float | None:
        return min((a.finished for a in self.between(after) if a.status == 200), default=None)

    def answered(self, count: int, after: float) -> bool:
        return len(self.between(after)) >= count


def counts(answers: list[Answer]) -> dict[int | str, int]:
    return dict(sorted(Counter(answer.status for answer in answers).items(), key=lambda item: str(item[0])))


def assert_only_503s(phase: str, answers: list[Answer]) -> None:
    """Every answer is a 200, or a 503 that says when to retry: no 500, no dropped connection."""
    refused = [a for a in answers if a.status != 200]
    assert all(a.status == 503 for a in refused), f"{phase}: {counts(answers)}"
    assert all(a.retry_after and int(a.retry_after) >= 1 for a in refused), f"{phase}: a 503 without Retry-After"


def report(title: str, phases: dict[str, list[Answer]], times: dict[str, float | None]) -> None:
    print(f"\n== {title}")
    for phase, answers in phases.items():
        print(f"   {phase:<34} {len(answers):>6} requests  {counts(answers)}")
    for what, seconds in times.items():
        print(f"   {what:<34} {'—' if seconds is None else f'{seconds:.2f} s'}")


# --------------------------------------------------------------------------- the served index


@dataclass
class Deployment:
    settings: Settings
    milvus: MilvusLiteServer
    instance: object
    key: str  # in the SQLite serving database of `settings`

    def app(self, **overrides) -> ServerThread:
        return ServerThread(create_app(self.settings.model_copy(update=overrides))).start()


@pytest.fixture(scope="module")
def deployment(tmp_path_factory) -> Iterator[Deployment]:
    """A few fixture documents indexed by the assets into `milvus-lite server` (the production profile's
    Milvus endpoint); the search log beside them feeds the memory engine."""
    root = tmp_path_factory.mktemp("faults")
    documents = root / "documents"
    documents.mkdir()
    for name in ("getting-started.md", "milvus-lite-notes.html", "release-notes.txt"):
        shutil.copy(FIXTURES / "corpus" / name, documents / name)
    milvus = MilvusLiteServer(root / "milvus")
    milvus.start()
    try:
        wait_for("milvus-lite server listening", milvus.listening, timeout_s=120)
        settings = Settings(
            data_dir=root / "data",
            documents_dir=documents,
            dagster_home=root / "dagster",
            milvus_uri=milvus.uri,
            milvus_lock_timeout_s=60,
            redis_url="",
            rate_limit_per_minute=0,
            alias_poll_s=0.5,
        )
        settings.resolved_dagster_home.mkdir(parents=True)
        with instance_for_test(temp_dir=str(settings.resolved_dagster_home)) as instance:
            index(settings, instance=instance)
            database = ServingDatabase(settings.resolved_serving_db_url)
            key = database.create_key("default", "fault tests")
            database.close()
            yield Deployment(settings, milvus, instance, key)
    finally:
        milvus.kill()


# --------------------------------------------------------------------------- Milvus


def test_a_store_loads_its_collection_again_after_milvus_restarts(tmp_path: Path) -> None:
    """The root of the 500s: a long-lived store remembered its collection as loaded, but a restarted Milvus
    starts with every collection released. Down, a call raises MilvusUnavailable; back, it loads again."""
    milvus = MilvusLiteServer(tmp_path / "milvus")
    milvus.start()
    try:
        wait_for("milvus-lite server listening", milvus.listening, timeout_s=120)
        build = IndexBuild("test-model", "test-model@abc123", 4, "tokens64-overlap8")
        row = {
            "chunk_id": "a#0",
            "doc_id": "a",
            "source_key": "a",
            "tenant": "default",
            "source": "a.md",
            "title": "Otters",
            "text": "Sea otters hold hands.",
            "search_text": "Otters\nSea otters hold hands.",
            "position": 0,
            "start_char": 0,
            "end_char": 22,
            "dense": [1.0, 0.0, 0.0, 0.0],
            "metadata": {},
        }
        with milvus_client(milvus.uri, lock_timeout_s=60) as client:
            store = MilvusStore(client, "idx")
            name = store.ensure_collection(build)
            store.upsert(name, [row])
            assert [hit.chunk_id for hit in store.search_bm25(name, "otters", 1)] == ["a#0"]
            milvus.kill()
            with pytest.raises(MilvusUnavailable, match="Milvus is not answering"):
                store.search_bm25(name, "otters", 1)
            restarted = milvus.start()
            hits = wait_for(
                "the same store searching again", lambda: _searched(store, name), timeout_s=120, every_s=0.2
            )
            print(
                f"\n== one MilvusStore across kill -9 + restart: searching again {time.monotonic() - restarted:.2f} s "
                "after the restart"
            )
            assert [hit.chunk_id for hit in hits] == ["a#0"]
            assert store.count(name) == 1
    finally:
        milvus.kill()


def _searched(store: MilvusStore, collection: str):
    try:
        return store.search_bm25(collection, "otters", 1)
    except MilvusUnavailable:
        return None


@pytest.mark.parametrize("engine", ["milvus", "auto"])
def test_milvus_killed_and_restarted_under_load(deployment: Deployment, engine: str) -> None:
    """`milvus`: searches need Milvus, so requests get 503 while it is down, and 200 again once the restarted
    server (which starts with every collection released) has loaded it again. `auto` is the memory engine
    for `milvus-lite server`: searches answer from memory throughout; /ready says Milvus is down, and a
    write after the restart is served."""
    server = deployment.app(search_engine=engine)
    milvus = deployment.milvus
    keyed = httpx.Client(base_url=server.url, headers={"X-API-Key": deployment.key}, timeout=30)
    try:
        assert keyed.get("/ready").json()["search_engine"] == ("milvus" if engine == "milvus" else "memory")
        with Load(server.url, deployment.key, [retrieve] * 3) as load:
            began = time.monotonic()
            wait_for("steady load before the fault", lambda: load.answered(30, began), timeout_s=60)
            killed = time.monotonic()
            milvus.kill()

            def ready_says_down() -> bool:
                ready = keyed.get("/ready")
                if engine == "milvus":
                    return ready.status_code == 503 and "Milvus" in ready.json()["reason"]
                return ready.status_code == 200 and ready.json()["milvus_healthy"] is False

            wait_for("/ready reflects Milvus being down", ready_says_down, timeout_s=10)
            ready_down_after = time.monotonic() - killed
            time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - killed)))  # the outage itself, not a wait
            restarted = milvus.start()
            wait_for("the restarted milvus-lite server listening", milvus.listening, timeout_s=120, every_s=0.05)
            listening = time.monotonic()
            wait_for("/ready says Milvus is back", lambda: keyed.get("/ready").json().get("milvus_healthy"), 60)
            ready_up_after = time.monotonic() - restarted
            wait_for("a success after the restart", lambda: load.first_success(restarted), timeout_s=60)
            recovered = load.first_success(restarted)
            wait_for("steady load after the recovery", lambda: load.answered(60, recovered + 1), timeout_s=60)
        phases = {
            "before the kill": load.between(began, killed),
            "Milvus down (kill -9 → restart)": load.between(killed, restarted),
            "restart → first success": load.between(restarted, recovered),
            "after the first success + 1 s": load.between(recovered + 1),
        }
        times = {
            "/ready reflected it after the kill": ready_down_after,
            "restart → Milvus listening": listening - restarted,
            "restart → /ready milvus_healthy": ready_up_after,
            "restart → first 200": recovered - restarted,
        }
        if engine == "milvus":
            times["Milvus listening → first 200"] = recovered - listening
        else:  # writes go through Milvus again, and the follower serves them
            (deployment.settings.documents_dir / "otters.md").write_text(
                "# Otters\n\nSea otters hold hands while they sleep in kelp forests."
            )
            index(deployment.settings, instance=deployment.instance)

            def otters_served() -> bool:
                response = keyed.post("/v1/retrieve", json={"query": "otters sleeping in kelp", "top_k": 3})
                return any(chunk["source"] == "otters.md" for chunk in response.json()["chunks"])

            wait_for("a document indexed after the restart is served", otters_served, timeout_s=30)
            times["restart → a new document indexed, served"] = time.monotonic() - restarted
        report(f"Milvus kill -9 for {OUTAGE_S:.0f} s, RAG_SEARCH_ENGINE={engine}", phases, times)
        assert counts(phases["before the kill"]) == {200: len(phases["before the kill"])}
        for phase in ("Milvus down (kill -9 → restart)", "restart → first success"):
            assert_only_503s(phase, phases[phase])
        if engine == "auto":  # the memory engine never needed Milvus to search
            assert counts(load.between(killed)) == {200: len(load.between(killed))}
        assert recovered - restarted <= RECOVERY_BUDGET_S, times
        assert counts(phases["after the first success + 1 s"]) == {200: len(phases["after the first success + 1 s"])}
    finally:
        keyed.close()
        server.stop()
        if milvus.process is None:  # the test failed during the outage: the next tests need Milvus
            milvus.start()
            wait_for("milvus-lite server listening", milvus.listening, timeout_s=120)


# --------------------------------------------------------------------------- Redis


def test_redis_stopped_and_restarted_under_load(deployment: Deployment, tmp_path: Path) -> None:
    """The result cache and the rate limits live in Redis; without it requests run uncached and unlimited."""
    redis = RedisProcess(tmp_path).start()
    try:
        server = deployment.app(redis_url=redis.url, rate_limit_per_minute=1_000_000)  # counted in Redis
        keyed = httpx.Client(base_url=server.url, headers={"X-API-Key": deployment.key}, timeout=30)
        try:
            with Load(server.url, deployment.key, [retrieve] * 3) as load:
                began = time.monotonic()
                wait_for("steady load before the fault", lambda: load.answered(30, began), timeout_s=60)
                stopped = time.monotonic()
                redis.stop()
                wait_for("/ready says the cache is down", lambda: keyed.get("/ready").json()["cache_healthy"] is False)
                wait_for("requests while Redis is down", lambda: load.answered(150, stopped), timeout_s=60)
                restarted = time.monotonic()
                redis.start()  # the same port
                wait_for("/ready says the cache is back", lambda: keyed.get("/ready").json()["cache_healthy"], 10)
                cache_back = time.monotonic()
                wait_for("requests after Redis is back", lambda: load.answered(60, cache_back), timeout_s=60)
        finally:
            keyed.close()
            server.stop()
    finally:
        redis.stop()
    phases = {
        "before the stop": load.between(began, stopped),
        "Redis down": load.between(stopped, restarted),
        "after the restart": load.between(restarted),
    }
    times = {"outage": restarted - stopped, "restart → /ready cache_healthy": cache_back - restarted}
    report("Redis killed and restarted", phases, times)
    for phase, answers in phases.items():
        assert counts(answers) == {200: len(answers)}, phase


# --------------------------------------------------------------------------- PostgreSQL


def analytics(client: httpx.Client, _tag: str) -> httpx.Response:
    """A keyed route that reads the serving database on every call."""
    return client.get("/v1/feedback/analytics")


def test_postgres_stopped_and_restarted_under_load(deployment: Deployment) -> None:
    """API keys, the query log and feedback live in the serving database. While it is down, a key still
    trusted from memory keeps working; everything that needs the database gets 503 with Retry-After."""
    cluster = PostgresCluster().init()
    try:
        cluster.start()
        database = ServingDatabase(cluster.url)
        key = database.create_key("default", "fault tests")
        database.close()
        server = deployment.app(serving_db_url=cluster.url, auth_cache_ttl_s=1.0)
        try:
            with Load(server.url, key, [retrieve, retrieve, analytics]) as load:
                began = time.monotonic()
                wait_for("steady load before the fault", lambda: load.answered(30, began), timeout_s=60)
                stopped = time.monotonic()
                cluster.stop()
                wait_for("503s while PostgreSQL is down", lambda: counts(load.between(stopped)).get(503, 0) >= 30, 60)
                restarted = time.monotonic()
                cluster.start()
                accepting = time.monotonic()
                wait_for("a success after the restart", lambda: load.first_success(accepting), timeout_s=60)
                recovered = load.first_success(accepting)
                wait_for("steady load after the recovery", lambda: load.answered(60, recovered + 1), timeout_s=60)
            rag = server.app.state.rag
            wait_for("the query log written after the restart", lambda: rag.db.queued_queries == 0, timeout_s=30)
        finally:
            server.stop()
    finally:
        cluster.remove()
    phases = {
        "before the stop": load.between(began, stopped),
        "PostgreSQL down": load.between(stopped, restarted),
        "restart → first success": load.between(restarted, recovered),
        "after the first success + 1 s": load.between(recovered + 1),
    }
    times = {"restart → accepting (pg_ctl -w)": accepting - restarted, "restart → first 200": recovered - restarted}
    report("PostgreSQL stopped (pg_ctl stop -m fast) and restarted", phases, times)
    assert counts(phases["before the stop"]) == {200: len(phases["before the stop"])}
    for phase in ("PostgreSQL down", "restart → first success"):
        assert_only_503s(phase, phases[phase])
    assert recovered - restarted <= RECOVERY_BUDGET_S
    assert counts(phases["after the first success + 1 s"]) == {200: len(phases["after the first success + 1 s"])}
