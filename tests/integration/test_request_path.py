"""What a request costs the serving database and Redis, on a real SQLite file, the real PostgreSQL and
the real Redis: keys are checked from memory within their TTL, a query is logged without waiting for
the database (and never lost on close), and a rate-limit hit is one Redis round trip."""

from __future__ import annotations

import random
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator

import pytest
import sqlalchemy as sa

from rag_core.querylog import ServingDatabase
from rag_core.ratelimit import RateLimiter
from tests.conftest import REDIS_URL
from tests.served import redis_available
from tests.unit.test_rate_limit_window import most_in_any_minute


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'serving.sqlite'}"
    return request.getfixturevalue("postgres_database")


@pytest.fixture
def open_database(database_url) -> Iterator[Callable[..., ServingDatabase]]:
    """ServingDatabase(database_url, **options), closed after the test."""
    opened: list[ServingDatabase] = []

    def open_(**options) -> ServingDatabase:
        opened.append(ServingDatabase(database_url, **options))
        return opened[-1]

    try:
        yield open_
    finally:
        for database in opened:
            database.close()


@pytest.fixture
def reader(database_url) -> Iterator[sa.Engine]:
    """A connection of its own: sees only what the serving database has committed."""
    engine = sa.create_engine(database_url)
    try:
        yield engine
    finally:
        engine.dispose()


def statements(database: ServingDatabase) -> list[str]:
    """Every SQL statement the database sends from now on."""
    sent: list[str] = []
    sa.event.listen(database.engine, "before_cursor_execute", lambda _c, _cur, sql, *_: sent.append(sql))
    return sent


def logged(engine: sa.Engine, query_id: str | None = None) -> int:
    where = "" if query_id is None else " WHERE query_id = :id"
    with engine.connect() as connection:
        return connection.execute(sa.text(f"SELECT count(*) FROM rag_queries{where}"), {"id": query_id}).scalar()


def log(database: ServingDatabase, tenant: str = "acme", question: str = "q", **overrides) -> str:
    values = dict(mode="hybrid", top_k=3, index_version="v1", model="m", chunk_ids=["a#0:1"], timings_ms={"s": 1.0})
    return database.log_query(tenant=tenant, question=question, **{**values, **overrides})


def wait_until(condition: Callable[[], bool], timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def rename_queries_table(engine: sa.Engine, source: str, target: str) -> None:
    with engine.begin() as connection:
        connection.execute(sa.text(f"ALTER TABLE {source} RENAME TO {target}"))


def waiting_on_a_lock(engine: sa.Engine) -> int:
    with engine.connect() as connection:
        return connection.execute(
            sa.text(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()"
            )
        ).scalar()


# ---- API keys


def test_a_checked_key_is_trusted_from_memory_until_its_ttl_ends(open_database):
    clock = Clock()
    database = open_database(auth_cache_ttl_s=5, clock=clock)
    key = database.create_key("acme")
    sent = statements(database)
    assert database.authenticate(key).tenant == "acme" and sent
    sent.clear()
    clock.now += 4.9
    assert [database.authenticate(key).tenant for _ in range(100)] == ["acme"] * 100
    assert sent == []
    clock.now += 0.2  # past the TTL: checked against the database again
    assert database.authenticate(key).tenant == "acme" and sent


def test_invalid_keys_are_rejected_and_remembered_briefly(open_database):
    clock = Clock()
    database = open_database(auth_cache_ttl_s=5, clock=clock)
    key = database.create_key("acme")
    sent = statements(database)
    assert database.authenticate("garbage") is None and database.authenticate("rag_") is None and sent == []
    forged = key[:-1] + ("A" if key[-1] != "A" else "B")  # the right key id, the wrong secret
    assert database.authenticate(forged) is None and database.authenticate(key + "x") is None and sent
    sent.clear()
    assert database.authenticate(forged) is None and sent == []
    clock.now += 1.01  # a rejection is remembered for a fifth of the TTL
    assert database.authenticate(forged) is None and sent
    assert database.authenticate(key).tenant == "acme"  # the real key is not affected


def test_a_revoked_key_stops_working_at_once_here_and_within_the_ttl_elsewhere(open_database):
    clock = Clock()
    here = open_database(auth_cache_ttl_s=5, clock=clock)
    elsewhere = open_database(auth_cache_ttl_s=5, clock=clock)  # another replica on the same database
    key = here.create_key("acme")
    assert here.authenticate(key) and elsewhere.authenticate(key)
    assert here.revoke_key(key.split("_")[1])
    assert here.authenticate(key) is None
    assert elsewhere.authenticate(key) is not None  # trusted from its cache…
    clock.now += 5.01
    assert elsewhere.authenticate(key) is None  # …until the TTL ends


def test_the_key_cache_is_bounded_and_can_be_turned_off(open_database):
    clock = Clock()
    bounded = open_database(auth_cache_ttl_s=5, auth_cache_size=2, clock=clock)
    first, second, third = (bounded.create_key(tenant) for tenant in ("a", "b", "c"))
    sent = statements(bounded)
    for key in (first, second, third):
        bounded.authenticate(key)
    sent.clear()
    assert bounded.authenticate(third).tenant == "c" and bounded.authenticate(second).tenant == "b" and sent == []
    assert bounded.authenticate(first).tenant == "a" and sent  # the least recently used was evicted
    uncached = open_database(auth_cache_ttl_s=0, clock=clock)
    sent = statements(uncached)
    uncached.authenticate(first)
    uncached.authenticate(first)
    assert len(sent) == 2


# ---- the query log


def test_log_query_returns_before_the_row_is_written_and_flush_writes_it(open_database, reader):
    database = open_database(log_interval_s=60)
    sent = statements(database)
    query_id = log(database)
    assert sent == [] and logged(reader, query_id) == 0 and database.queued_queries == 1
    assert database.query_exists(query_id, "acme") and not database.query_exists(query_id, "globex")
    database.flush()
    assert logged(reader, query_id) == 1 and database.queued_queries == 0
    assert database.query_exists(query_id, "acme") and not database.query_exists(query_id, "globex")


def test_the_writer_thread_writes_queued_queries_on_its_own(open_database, reader):
    database = open_database(log_interval_s=0.05)
    ids = [log(database, question=f"q{n}") for n in range(5)]
    wait_until(lambda: logged(reader) == 5)
    with reader.connect() as connection:
        row = connection.execute(
            sa.text("SELECT question, chunk_ids, timings_ms FROM rag_queries WHERE query_id = :id"), {"id": ids[2]}
        ).one()
    assert tuple(row) == ("q2", '["a#0:1"]', '{"s": 1.0}')


def test_a_thousand_queued_queries_all_land_after_close(database_url, reader):
    database = ServingDatabase(database_url, log_interval_s=60, log_batch_rows=300)
    ids = {log(database, question=f"q{n}") for n in range(1_000)}
    assert len(ids) == 1_000
    database.close()
    assert logged(reader) == 1_000 and database.queued_queries == 0


def test_feedback_and_analytics_see_a_query_that_is_still_queued(open_database):
    database = open_database(log_interval_s=60)
    first = log(database, question="first")
    database.add_feedback(first, 5, True, "right after the answer")  # PostgreSQL checks the foreign key
    second = log(database, question="second")
    analytics = database.analytics("acme")
    assert analytics["queries"] == 2 and analytics["feedback"] == 1 and analytics["feedback_rate"] == 0.5
    log(database, question="third")
    assert database.analytics("acme")["queries"] == 3
    database.add_feedback(second, 1, False, "")
    assert database.relevant_pairs() == [("first", ["a#0:1"])]


def test_a_failed_batch_stays_queued_and_is_retried(open_database, reader):
    database = open_database(log_interval_s=0.02, log_retry_delay_s=0.02, log_max_retry_delay_s=0.05)
    rename_queries_table(reader, "rag_queries", "rag_queries_away")
    try:
        query_id = log(database)
        with pytest.raises(sa.exc.SQLAlchemyError):
            database.flush()
        assert database.queued_queries == 1 and database.query_exists(query_id, "acme")
    finally:
        rename_queries_table(reader, "rag_queries_away", "rag_queries")
    wait_until(lambda: database.queued_queries == 0)  # the thread's next attempt; a row leaves after its commit
    assert logged(reader, query_id) == 1 and database.dropped_queries == 0


def test_a_full_queue_writes_synchronously_while_the_database_answers_and_drops_while_it_fails(open_database, reader):
    database = open_database(log_interval_s=60, log_max_pending=2)
    queued = [log(database, question=f"q{n}") for n in range(2)]
    written = log(database, question="overflow")  # full, database healthy: written by the request itself
    assert logged(reader, written) == 1 and database.queued_queries == 2
    rename_queries_table(reader, "rag_queries", "rag_queries_away")
    try:
        with pytest.raises(sa.exc.SQLAlchemyError):
            database.flush()
        sent = statements(database)
        dropped = log(database, question="during the outage")  # full, database failing: dropped, not waited on
        assert sent == [] and database.dropped_queries == 1
    finally:
        rename_queries_table(reader, "rag_queries_away", "rag_queries")
    database.flush()
    assert [logged(reader, query_id) for query_id in [*queued, written, dropped]] == [1, 1, 1, 0]


def test_a_row_an_earlier_attempt_already_wrote_is_not_written_twice_or_counted_as_dropped(open_database, reader):
    database = open_database(log_interval_s=60)
    first = log(database)
    database.flush()
    log(database, query_id=first)  # as a retried batch whose commit was not acknowledged holds it again
    second = log(database)
    database.flush()
    assert logged(reader, first) == 1 and logged(reader, second) == 1 and database.dropped_queries == 0


@pytest.mark.postgres
def test_a_locked_table_does_not_hold_requests_up(postgres_database):
    database = ServingDatabase(postgres_database, log_interval_s=0.01)
    locker = sa.create_engine(postgres_database)
    try:
        with locker.connect() as connection:
            connection.execute(sa.text("LOCK TABLE rag_queries IN ACCESS EXCLUSIVE MODE"))
            log(database, question="first")
            wait_until(lambda: waiting_on_a_lock(locker) == 1)  # the writer's INSERT is behind the lock
            started = time.monotonic()
            ids = [log(database, question=f"q{n}") for n in range(200)]
            assert time.monotonic() - started < 1.0
            assert database.query_exists(ids[-1], "acme")  # from the queue: no query behind the lock
            connection.rollback()  # releases the lock
        database.close()
        assert logged(locker) == 201
    finally:
        database.close()
        locker.dispose()


@pytest.mark.postgres
def test_a_row_the_database_refuses_does_not_hold_up_its_batch(postgres_database):
    database = ServingDatabase(postgres_database, log_interval_s=60)
    reader = sa.create_engine(postgres_database)
    try:
        good = [log(database, question=f"q{n}") for n in range(3)]
        refused = log(database, model="m" * 300)  # the column holds 256 characters
        database.close()
        assert [logged(reader, query_id) for query_id in [*good, refused]] == [1, 1, 1, 0]
        assert database.dropped_queries == 1
    finally:
        reader.dispose()


# ---- rate limits


class RoundTripCounter:
    """A TCP relay in front of the real Redis that counts round trips: data the client sends after
    the server last answered starts a new one."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"redis://127.0.0.1:{self.listener.getsockname()[1]}/0"
        self.round_trips = 0
        self._server_spoke_last = True
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            threading.Thread(target=self._relay, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._relay, args=(upstream, client, False), daemon=True).start()

    def _relay(self, source: socket.socket, target: socket.socket, from_client: bool) -> None:
        try:
            while data := source.recv(65536):
                with self._lock:  # counted before forwarding: the reply cannot overtake the count
                    if from_client and self._server_spoke_last:
                        self.round_trips += 1
                    self._server_spoke_last = not from_client
                target.sendall(data)
        except OSError:
            pass
        finally:
            target.close()

    def close(self) -> None:
        self.listener.close()


def test_a_rate_limit_hit_is_one_redis_round_trip():
    redis_available(REDIS_URL)
    relay = RoundTripCounter(("127.0.0.1", 6379))
    try:
        limiter = RateLimiter(per_minute=3, redis_url=relay.url, clock=lambda: 60.0 * 30_000_000 + 1)
        subject = f"test:{uuid.uuid4().hex}"
        limiter.hit(f"warm-up:{uuid.uuid4().hex}")  # opening the connection has its own handshake
        relay.round_trips = 0
        decisions = [limiter.hit(subject) for _ in range(5)]
        assert relay.round_trips == 5
        assert [d.allowed for d in decisions] == [True, True, True, False, False]
        assert [d.remaining for d in decisions] == [2, 1, 0, 0, 0] and decisions[-1].retry_after_s == 60
    finally:
        relay.close()


def test_in_redis_at_most_n_pass_in_any_60_second_span_across_replicas():
    redis_available(REDIS_URL)
    clock = Clock()
    clock.now = 60.0 * 30_000_000 + 50  # ten seconds before a clock minute starts
    replicas = [RateLimiter(per_minute=10, redis_url=REDIS_URL, clock=clock) for _ in range(2)]
    subject = f"test:{uuid.uuid4().hex}"
    rng = random.Random(3)
    allowed = []
    for n in range(600):  # two replicas share the window through Redis
        clock.now += rng.choice([0.0, 0.05, 0.5, 2.0])
        if replicas[n % 2].hit(subject).allowed:
            allowed.append(clock.now)
    assert most_in_any_minute(allowed) == 10 and len(allowed) >= 10 * 5


def test_a_redis_that_does_not_answer_lets_requests_through_without_waiting_on_each():
    silent = socket.create_server(("127.0.0.1", 0))  # accepts connections, never replies
    try:
        limiter = RateLimiter(per_minute=1, redis_url=f"redis://127.0.0.1:{silent.getsockname()[1]}/0")
        assert limiter.hit("key").allowed  # waits for the socket timeout once
        started = time.monotonic()
        assert all(limiter.hit("key").allowed for _ in range(50))
        assert time.monotonic() - started < 0.2
    finally:
        silent.close()
