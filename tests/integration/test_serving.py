"""The serving API over a real materialized index, through a real HTTP port, with real Redis."""

import json
import uuid

import pytest

from tests.integration.pipeline_helpers import apply_sensor_result, sensor_tick
from tests.served import ANALYTICS_TENANT
from tests.support.waiting import wait_for

pytestmark = pytest.mark.slow


def test_health_ready_and_openapi(served):
    with served.client() as client:
        assert client.get("/health").json() == {"status": "alive"}
        ready = client.get("/ready")
        assert ready.status_code == 200, ready.text
        body = ready.json()
        assert body["collection"].startswith("rag_chunks__all_minilm_l6_v2_")
        assert body["rows"] > 0 and body["embedding_version"].startswith("all-MiniLM-L6-v2@")
        assert body["cache"] == "redis" and body["cache_healthy"] is True
        paths = client.get("/openapi.json").json()["paths"]
        assert {"/v1/retrieve", "/v1/query", "/v1/feedback", "/v1/documents", "/ready"} <= set(paths)
        assert client.get("/docs").status_code == 200


def test_every_route_needs_a_valid_key(served):
    with served.server.client() as anonymous:
        missing = anonymous.post("/v1/retrieve", json={"query": "sensor"})
        assert missing.status_code == 401 and "create-key" in missing.json()["detail"]
        bad = anonymous.post("/v1/retrieve", json={"query": "sensor"}, headers={"X-API-Key": "rag_nope_nope"})
        assert bad.status_code == 401
        bearer = anonymous.post(
            "/v1/retrieve", json={"query": "sensor"}, headers={"Authorization": f"Bearer {served.keys['default']}"}
        )
        assert bearer.status_code == 200


@pytest.mark.parametrize("mode", ["dense", "bm25", "hybrid"])
def test_retrieve_modes_find_the_document(served, mode):
    with served.client() as client:
        response = client.post(
            "/v1/retrieve",
            json={"query": "how does the documents sensor handle a deleted file", "mode": mode, "top_k": 3},
        )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["mode"] == mode and len(body["chunks"]) == 3 and body["query_id"]
    assert "getting-started.md" in [chunk["source"] for chunk in body["chunks"]]
    for chunk in body["chunks"]:
        assert chunk["end_char"] - chunk["start_char"] == len(chunk["text"])
    scores = [chunk["score"] for chunk in body["chunks"]]
    assert scores == sorted(scores, reverse=True)


def test_hybrid_fusion_is_configurable(served):
    with served.client() as client:
        dense_only = client.post(
            "/v1/retrieve", json={"query": "Milvus Lite file", "mode": "hybrid", "bm25_weight": 0, "top_k": 5}
        ).json()["chunks"]
        dense = client.post("/v1/retrieve", json={"query": "Milvus Lite file", "mode": "dense", "top_k": 5}).json()
    assert [c["chunk_id"] for c in dense_only] == [c["chunk_id"] for c in dense["chunks"]]


def test_filters_restrict_results(served):
    with served.client() as client:
        response = client.post(
            "/v1/retrieve", json={"query": "index", "top_k": 10, "filters": {"source": "milvus-lite-notes.html"}}
        )
    assert response.status_code == 200
    assert {chunk["source"] for chunk in response.json()["chunks"]} == {"milvus-lite-notes.html"}


@pytest.mark.parametrize(
    "payload, message",
    [
        ({"query": "   "}, "query must not be empty"),
        ({"query": "x" * 20_001}, "query: String should have at most 20000 characters"),
        ({"query": "ok", "top_k": 0}, "top_k"),
        ({"query": "ok", "top_k": 500}, "top_k: Input should be less than or equal to 50"),
        ({"query": "ok", "filters": {"tenant": "acme"}}, "Input should be 'doc_id', 'source', 'source_key' or 'title'"),
        ({"query": "ok", "filters": {"doc_id": []}}, "List should have at least 1 item"),
        ({"query": "ok", "mode": "magic"}, "mode"),
    ],
)
def test_bad_requests_get_422_with_a_clear_message(served, payload, message):
    with served.client() as client:
        response = client.post("/v1/retrieve", json=payload)
    assert response.status_code == 422
    assert message in response.json()["detail"]


def test_a_long_query_is_answered_not_rejected(served):
    """A pasted paragraph is a question too: 10,000 characters are embedded up to the model's limit and
    read whole by BM25 — the word that finds the document comes at the very end."""
    padding = "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor. " * 125
    question = padding + "What does the embedding cache key on?"
    assert len(question) >= 10_000
    with served.client() as client:
        routes = (("/v1/retrieve", {"mode": "bm25"}), ("/v1/retrieve", {"mode": "hybrid"}), ("/v1/query", {}))
        for route, body in routes:
            response = client.post(route, json={"query": question, "top_k": 5, **body})
            assert response.status_code == 200, (route, response.text[:300])
        chunks = client.post("/v1/retrieve", json={"query": question, "top_k": 5, "mode": "bm25"}).json()["chunks"]
    assert "embedding-cache.pdf" in {chunk["source"] for chunk in chunks}


def test_tenants_never_see_each_others_chunks(served):
    question = {"query": "which project ships the quantum product", "top_k": 20, "mode": "hybrid"}
    sources = {}
    for tenant in ("acme", "globex", "default"):
        with served.client(tenant) as client:
            sources[tenant] = {chunk["source"] for chunk in client.post("/v1/retrieve", json=question).json()["chunks"]}
    assert sources["acme"] == {"tenant=acme/acme-roadmap.md"}
    assert sources["globex"] == {"tenant=globex/globex-plan.md"}
    assert not any(source.startswith("tenant=") for source in sources["default"])


def test_query_answers_with_citations_that_map_to_sources(served):
    with served.client() as client:
        response = client.post("/v1/query", json={"query": "What does the embedding cache key on?", "top_k": 4})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["degraded"] is False and body["model"] == "extractive/best-sentences"
    assert body["citations"], body["answer"]
    for citation in body["citations"]:
        assert f"[{citation['number']}]" in body["answer"]
        assert body["sources"][citation["number"] - 1]["chunk_id"] == citation["chunk_id"]
    assert any(c["source"] == "embedding-cache.pdf" for c in body["citations"])
    assert {"search", "generate"} <= set(body["timings_ms"])
    # the whole sentence, though the PDF breaks it over three printed lines
    assert "keyed by the model version and the hash of each chunk text, so a chunk" in body["answer"]
    assert body["relevance"] >= body["relevance_threshold"] == served.settings.relevance_threshold


def test_an_off_topic_question_is_told_the_documents_do_not_contain_the_answer(served):
    from rag_core.generation import NOT_IN_DOCUMENTS

    question = {"query": "Who won the 2018 FIFA world cup?", "top_k": 5}
    with served.client() as client:
        body = client.post("/v1/query", json=question).json()
        with client.stream("POST", "/v1/query", json={**question, "stream": True}) as response:
            events = [block for block in response.read().decode().split("\n\n") if block]
        retrieved = client.post("/v1/retrieve", json=question).json()
    assert body["answer"] == NOT_IN_DOCUMENTS, body["answer"]
    assert body["citations"] == [] and body["degraded"] is False and len(body["sources"]) == 5
    assert body["relevance"] < body["relevance_threshold"] == served.settings.relevance_threshold
    assert "RAG_RELEVANCE_THRESHOLD" in body["reason"]
    done = json.loads(events[-1].split("data: ", 1)[1])
    assert done["answer"] == NOT_IN_DOCUMENTS and done["citations"] == [] and done["degraded"] is False
    # what a console draws: the threshold beside the best similarity of the same chunks
    assert retrieved["relevance_threshold"] == body["relevance_threshold"]
    assert retrieved["relevance"] == body["relevance"]


def test_query_streams_server_sent_events(served):
    with (
        served.client() as client,
        client.stream(
            "POST", "/v1/query", json={"query": "What does the nightly reconcile do?", "stream": True}
        ) as response,
    ):
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [block for block in response.read().decode().split("\n\n") if block]
    names = [block.split("\n")[0].removeprefix("event: ") for block in events]
    assert names[0] == "sources" and names[-1] == "done" and names.count("delta") > 3
    done = json.loads(events[-1].split("data: ", 1)[1])
    deltas = "".join(json.loads(block.split("data: ", 1)[1])["text"] for block in events[1:-1])
    assert deltas.strip() == done["answer"] and done["query_id"] and done["citations"]


def test_results_are_cached_in_redis_under_the_index_version(served):
    import redis

    question = {"query": "Where does Milvus Lite store the vector database?", "top_k": 3}
    with served.client() as client:
        first = client.post("/v1/retrieve", json=question).json()
        second = client.post("/v1/retrieve", json=question).json()
        metrics = client.get("/metrics").text
    assert first["cached"] is False and second["cached"] is True
    assert [c["chunk_id"] for c in first["chunks"]] == [c["chunk_id"] for c in second["chunks"]]
    pattern = f"rag:tenant=default:retrieved:{first['index_version']}:*"  # under the tenant: a purge finds them
    keys = redis.Redis.from_url(served.settings.redis_url).keys(pattern)
    assert keys
    assert 'rag_cache_requests_total{cache="results",result="hit"}' in metrics


def test_feedback_and_analytics(served):
    with served.client(ANALYTICS_TENANT) as client:
        query_id = client.post("/v1/retrieve", json={"query": "Falcon"}).json()["query_id"]
        assert (
            client.post("/v1/feedback", json={"query_id": query_id, "rating": 2, "is_relevant": False}).status_code
            == 201
        )
        second = client.post("/v1/retrieve", json={"query": "quantum widget"}).json()["query_id"]
        client.post("/v1/feedback", json={"query_id": second, "rating": 5, "is_relevant": True, "comment": "great"})
        analytics = client.get("/v1/feedback/analytics").json()
        assert client.post("/v1/feedback", json={"query_id": query_id}).status_code == 422
        assert client.post("/v1/feedback", json={"query_id": "nope", "rating": 3}).status_code == 404
        assert client.post("/v1/feedback", json={"query_id": query_id, "rating": 9}).status_code == 422
    with served.client("globex") as other:  # another tenant cannot rate this tenant's queries
        assert other.post("/v1/feedback", json={"query_id": query_id, "rating": 1}).status_code == 404
    assert analytics["queries"] >= 2 and analytics["feedback"] == 2
    assert analytics["mean_rating"] == 3.5 and analytics["relevance_rate"] == 0.5
    assert analytics["worst_queries"][0]["question"] == "Falcon"


def test_metrics_expose_routes_stages_cache_and_index(served):
    with served.client() as client:
        # a question never asked before, so no stage is skipped by the (persistent) Redis cache
        client.post("/v1/query", json={"query": f"What is hybrid search? {uuid.uuid4().hex}"})
        text = client.get("/metrics").text
    assert 'rag_requests_total{method="POST",route="/v1/query",status="200"}' in text
    for stage in ("embed", "search", "generate"):
        assert f'rag_stage_seconds_bucket{{le="0.001",stage="{stage}"}}' in text
    assert "rag_index_info{" in text and "rag_index_rows" in text


def test_upload_index_status_and_delete_through_the_sensor(served):
    settings, instance = served.settings, served.instance
    with served.client("acme") as client:
        upload = client.post(
            "/v1/documents", files={"file": ("otter-facts.md", b"# Otters\n\nSea otters hold hands while sleeping.")}
        )
        assert upload.status_code == 202, upload.text
        [uploaded] = upload.json()["documents"]
        doc_id = uploaded["doc_id"]
        assert (settings.documents_dir / "tenant=acme" / "otter-facts.md").exists()
        assert client.get(f"/v1/documents/{doc_id}").json()["status"] == "pending"

        apply_sensor_result(settings, instance, sensor_tick(settings, instance))  # what the daemon does
        # The server follows the index in the background: the new chunk becomes searchable within seconds.
        hits = wait_for(
            "the uploaded document is searchable",
            lambda: [
                hit
                for hit in client.post("/v1/retrieve", json={"query": "otters sleeping", "top_k": 1}).json()["chunks"]
                if hit["source"] == "tenant=acme/otter-facts.md"
            ],
        )
        assert hits[0]["doc_id"] == doc_id
        status = client.get(f"/v1/documents/{doc_id}").json()
        assert status["status"] == "indexed" and status["chunks"] == 1 and status["tenant"] == "acme"
        assert status["index_version"] == client.get("/ready").json()["index_version"]
        assert status["embedding_version"].startswith("all-MiniLM-L6-v2@")
        with served.client("globex") as other:
            assert other.get(f"/v1/documents/{doc_id}").status_code == 404
            assert other.delete(f"/v1/documents/{doc_id}").status_code == 404

        assert client.delete(f"/v1/documents/{doc_id}").status_code == 202
        apply_sensor_result(settings, instance, sensor_tick(settings, instance))
        assert client.get(f"/v1/documents/{doc_id}").status_code == 404
        wait_for(
            "the deleted document leaves the results",
            lambda: all(
                hit["source"] != "tenant=acme/otter-facts.md"
                for hit in client.post("/v1/retrieve", json={"query": "otters sleeping", "top_k": 3}).json()["chunks"]
            ),
        )


@pytest.mark.parametrize(
    "name, content, code",
    [
        ("virus.exe", b"MZ...", 415),
        ("empty.md", b"  ", 422),
        ("fake.pdf", b"not a pdf", 422),
        ("latin.txt", "café".encode("latin-1"), 422),
        ("big.txt", b"x" * 21_000_001, 413),
    ],
)
def test_bad_uploads_are_rejected(served, name, content, code):
    with served.client() as client:
        response = client.post("/v1/documents", files={"file": (name, content)})
    assert response.status_code == code, response.text
    assert not (served.settings.documents_dir / name).exists()
