"""Failure paths of the serving API on a real HTTP port: an LLM that fails, a Redis that dies and comes
back, per-key rate limits, and the alias moving to a new index build while the server runs."""

import time

import pytest

from rag_assets.cli import index
from rag_serving.app import create_app
from tests.serving_server import RedisProcess, ServerThread

pytestmark = pytest.mark.slow


@pytest.fixture
def fragile(served, tmp_path):
    """A second app on the same index: its own redis-server, an unreachable LLM, 6 requests a minute."""
    redis = RedisProcess(tmp_path).start()
    settings = served.settings.model_copy(
        update={
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
        yield server, redis, served.keys
    finally:
        server.stop()
        redis.stop()


def test_llm_failure_degrades_to_sources_never_500(fragile):
    server, _redis, keys = fragile
    with server.client(keys["default"]) as client:
        response = client.post("/v1/query", json={"query": "What does the sensor do?", "top_k": 3})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["degraded"] is True and "Connection error" in body["reason"]
    assert len(body["sources"]) == 3 and [c["number"] for c in body["citations"]] == [1, 2, 3]


def test_redis_dying_mid_flight_keeps_requests_working(fragile):
    server, redis, keys = fragile
    question = {"query": "embedding cache model version", "top_k": 2}
    with server.client(keys["acme"]) as client:
        client.post("/v1/retrieve", json=question)
        assert client.post("/v1/retrieve", json=question).json()["cached"] is True
        redis.stop()
        during = client.post("/v1/retrieve", json=question)
        assert during.status_code == 200 and during.json()["cached"] is False
        assert client.get("/ready").json()["cache_healthy"] is False
        redis.start()  # back on the same port
        time.sleep(2.5)  # the client retries the connection after its back-off
        client.post("/v1/retrieve", json=question)
        assert client.post("/v1/retrieve", json=question).json()["cached"] is True
        assert client.get("/ready").json()["cache_healthy"] is True


def test_rate_limit_returns_429_with_retry_after(fragile):
    server, _redis, keys = fragile
    with server.client(keys["globex"]) as client:
        codes = [client.post("/v1/retrieve", json={"query": f"limit {n}"}).status_code for n in range(8)]
        limited = client.post("/v1/retrieve", json={"query": "one more"})
    assert codes[:6] == [200] * 6 and codes[6:] == [429, 429]
    assert limited.status_code == 429 and 1 <= int(limited.headers["Retry-After"]) <= 61


def test_the_server_follows_the_alias_to_a_new_build_without_restart(served):
    with served.client() as client:
        before = client.get("/ready").json()
        rebuilt = served.settings.model_copy(update={"chunk_max_tokens": 96, "chunk_overlap_tokens": 16})
        index(rebuilt, instance=served.instance)  # a full run publishes the new build: the alias moves
        deadline = time.monotonic() + 10
        while client.get("/ready").json()["collection"] == before["collection"] and time.monotonic() < deadline:
            time.sleep(0.2)
        after = client.get("/ready").json()
        assert after["collection"] != before["collection"] and "tokens96" in after["collection"]
        assert after["rows"] > before["rows"]  # smaller chunks, more of them
        hits = client.post("/v1/retrieve", json={"query": "reconcile schedule drift", "top_k": 5}).json()
        assert hits["index_version"] == after["index_version"]
        # move back so the other tests keep their expectations
        index(served.settings, instance=served.instance)
        deadline = time.monotonic() + 10
        while client.get("/ready").json()["collection"] != before["collection"] and time.monotonic() < deadline:
            time.sleep(0.2)
        assert client.get("/ready").json()["collection"] == before["collection"]
