"""Failure paths of the serving API on a real HTTP port: an LLM that fails, a Redis that dies and comes
back, per-key rate limits, and the alias moving to a new index build while the server runs."""

import logging
import time

import pytest
import sqlalchemy as sa

from rag_assets.cli import index
from rag_assets.resources import build_resources
from rag_core.promotion import builds as list_builds
from rag_core.promotion import promote, rollback
from rag_core.querylog import ServingDatabase
from rag_serving.app import create_app
from tests.serving_server import RedisProcess, ServerThread
from tests.support.waiting import wait_for

pytestmark = pytest.mark.slow


@pytest.fixture
def fragile(served, tmp_path, postgres_database):
    """A second app on the same index: its query log, feedback and keys in PostgreSQL, its own
    redis-server, an unreachable LLM, and 6 requests a minute (acme: 10,000)."""
    redis = RedisProcess(tmp_path).start()
    database = ServingDatabase(postgres_database)
    keys = {tenant: database.create_key(tenant) for tenant in ("default", "acme", "globex")}
    # acme polls /ready (a keyed request: a rate-limit hit) while Redis is down and back; its own limit keeps
    # those polls from using up the 6 a minute that globex's test is about.
    database.set_tenant_limits("acme", rate_limit_per_minute=10_000)
    database.engine.dispose()
    settings = served.settings.model_copy(
        update={
            "serving_db_url": postgres_database,
            "redis_url": redis.url,
            "rate_limit_per_minute": 6,
            "llm_model": "openai/gpt-4o-mini",
            "llm_api_base": "http://127.0.0.1:9/v1",
            "llm_api_key": "sk-test",
            "llm_timeout_s": 3,
        }
    )
    server = ServerThread(create_app(settings)).start()
    try:
        yield server, redis, keys
    finally:
        server.stop()
        redis.stop()


def test_llm_failure_degrades_to_sources_never_500(fragile, postgres_database):
    server, _redis, keys = fragile
    with server.client(keys["default"]) as client:
        response = client.post("/v1/query", json={"query": "What does the sensor do?", "top_k": 3})
        assert response.status_code == 200, response.text
        body = response.json()
        # The reason names what failed underneath litellm's wrappers: the provider refused the connection.
        assert body["degraded"] is True and "Connection refused" in body["reason"], body["reason"]
        assert len(body["sources"]) == 3 and [c["number"] for c in body["citations"]] == [1, 2, 3]
        feedback = client.post("/v1/feedback", json={"query_id": body["query_id"], "rating": 1, "is_relevant": False})
        assert feedback.status_code == 201
    engine = sa.create_engine(postgres_database)  # the query log and feedback are in PostgreSQL
    with engine.connect() as connection:
        logged = connection.execute(
            sa.text("SELECT degraded, model FROM rag_queries WHERE query_id = :id"), {"id": body["query_id"]}
        ).one()
        rated = connection.execute(sa.text("SELECT count(*) FROM rag_feedback")).scalar()
    engine.dispose()
    assert tuple(logged) == (True, "openai/gpt-4o-mini") and rated == 1


def test_redis_dying_mid_flight_keeps_requests_working(fragile):
    server, redis, keys = fragile
    question = {"query": "embedding cache model version", "top_k": 2}
    with server.client(keys["acme"]) as client:
        client.post("/v1/retrieve", json=question)
        assert client.post("/v1/retrieve", json=question).json()["cached"] is True
        redis.stop()
        during = client.post("/v1/retrieve", json=question)
        assert during.status_code == 200 and during.json()["cached"] is False
        # /ready reads the cache health the server checks in the background (every RAG_ALIAS_POLL_S)
        wait_for("/ready reports the cache down", lambda: client.get("/ready").json()["cache_healthy"] is False)
        redis.start()  # back on the same port
        # the background health check reconnects once the cache's back-off ends: then caching resumes
        wait_for("/ready reports the cache back", lambda: client.get("/ready").json()["cache_healthy"] is True)
        client.post("/v1/retrieve", json=question)
        again = client.post("/v1/retrieve", json=question)
        assert again.status_code == 200 and again.json()["cached"] is True, again.text


def test_rate_limit_returns_429_with_retry_after(fragile):
    server, _redis, keys = fragile
    with server.client(keys["globex"]) as client:
        codes = [client.post("/v1/retrieve", json={"query": f"limit {n}"}).status_code for n in range(8)]
        limited = client.post("/v1/retrieve", json={"query": "one more"})
    assert codes[:6] == [200] * 6 and codes[6:] == [429, 429]
    assert limited.status_code == 429 and 1 <= int(limited.headers["Retry-After"]) <= 60


def test_the_server_follows_the_alias_to_a_new_build_without_restart(served):
    def served_collection(client) -> str:
        return client.get("/ready").json()["collection"]

    with served.client() as client:
        before = client.get("/ready").json()
        rebuilt = served.settings.model_copy(update={"chunk_max_tokens": 96, "chunk_overlap_tokens": 16})
        index(rebuilt, instance=served.instance)  # a new chunking is a candidate build: nothing moves yet
        time.sleep(served.settings.alias_poll_s + 0.5)  # one alias poll of the server, which must not move
        assert served_collection(client) == before["collection"]
        with build_resources(served.settings)["milvus"].store() as store:
            (candidate,) = [row["collection"] for row in list_builds(store) if row["status"] == "candidate"]
            promote(store, candidate, ndcg=None)  # what promoted_index does once the gate passed
        try:
            wait_for("the server serves the promoted build", lambda: served_collection(client) == candidate)
            after = client.get("/ready").json()
            assert after["collection"] == candidate and "tokens96" in after["collection"]
            assert after["rows"] > before["rows"]  # smaller chunks, more of them
            hits = client.post("/v1/retrieve", json={"query": "reconcile schedule drift", "top_k": 5}).json()
            assert hits["index_version"] == after["index_version"]
        finally:  # the index is shared by the whole test run: roll back even when an assertion failed
            with build_resources(served.settings)["milvus"].store() as store:
                assert rollback(store) == (candidate, before["collection"])
        wait_for("the server serves the build again", lambda: served_collection(client) == before["collection"])


def test_auth_can_be_disabled_for_the_demo_and_says_so(served, caplog):
    settings = served.settings.model_copy(update={"auth_disabled": True, "redis_url": ""})
    with caplog.at_level(logging.WARNING, logger="rag_serving"):
        server = ServerThread(create_app(settings)).start()
    try:
        assert "AUTHENTICATION IS DISABLED" in caplog.text
        with server.client() as anonymous:
            response = anonymous.post("/v1/retrieve", json={"query": "sensor", "top_k": 50})
            assert response.status_code == 200
            assert not any(c["source"].startswith("tenant=") for c in response.json()["chunks"])
            assert (
                anonymous.get("/ready").json()["auth"] == "disabled"
                and anonymous.get("/ready").json()["cache"] == "memory"
            )
    finally:
        server.stop()
