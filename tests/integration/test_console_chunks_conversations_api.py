"""The console's API over the served index, through a real HTTP server: a document's chunks, disabling one,
retrieval with explained scores, and conversations — each scoped to the caller's tenant."""

from urllib.parse import quote

import pytest

from rag_core.catalog import Catalog
from rag_core.ids import source_key
from tests.support.waiting import wait_for

pytestmark = pytest.mark.slow
GETTING_STARTED = source_key("getting-started.md")
ACME_ROADMAP = source_key("tenant=acme/acme-roadmap.md")


def chunk_url(doc_id: str, chunk_id: str) -> str:
    return f"/v1/documents/{doc_id}/chunks/{quote(chunk_id, safe='/')}"


def retrieved_ids(client, query: str, mode: str = "hybrid") -> list[str]:
    response = client.post("/v1/retrieve", json={"query": query, "mode": mode, "top_k": 5})
    assert response.status_code == 200, response.text
    return [chunk["chunk_id"] for chunk in response.json()["chunks"]]


def test_a_documents_chunks_come_in_order_with_offsets_into_its_text_and_token_counts(served):
    with served.client() as client:
        response = client.get(f"/v1/documents/{GETTING_STARTED}/chunks")
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["source"] == "getting-started.md" and body["disabled"] == 0 and body["index_version"]
        (document,) = body["documents"]
        chunks = document["chunks"]
        assert [chunk["position"] for chunk in chunks] == list(range(len(chunks))) and len(chunks) >= 1
        for chunk in chunks:
            assert document["text"][chunk["start_char"] : chunk["end_char"]] == chunk["text"]
            assert 0 < chunk["tokens"] <= 256 and chunk["enabled"] is True and chunk["redactions"] == []
        assert "documents_sensor" in document["text"]
    with served.client("acme") as acme:
        refused = acme.get(f"/v1/documents/{GETTING_STARTED}/chunks")
        assert refused.status_code == 404 and "GET /v1/documents" in refused.json()["detail"]


def test_a_disabled_chunk_leaves_retrieval_and_only_its_tenant_can_toggle_it(served):
    query = "When does Project Falcon ship the quantum widget?"
    with served.client("acme") as acme, served.client("globex") as globex:
        (document,) = acme.get(f"/v1/documents/{ACME_ROADMAP}/chunks").json()["documents"]
        (chunk,) = document["chunks"]
        assert chunk["chunk_id"] in retrieved_ids(acme, query)

        foreign = globex.patch(chunk_url(ACME_ROADMAP, chunk["chunk_id"]), json={"enabled": False})
        assert foreign.status_code == 404, foreign.text
        assert chunk["chunk_id"] in retrieved_ids(acme, query)
        try:
            toggled = acme.patch(chunk_url(ACME_ROADMAP, chunk["chunk_id"]), json={"enabled": False})
            assert toggled.status_code == 200, toggled.text
            assert toggled.json() == {"doc_id": ACME_ROADMAP, "chunk_id": chunk["chunk_id"], "enabled": False}
            for mode in ("dense", "bm25", "hybrid"):
                wait_for(
                    f"{mode} leaves the disabled chunk out",
                    lambda m=mode: chunk["chunk_id"] not in retrieved_ids(acme, query, m),
                )
            view = acme.get(f"/v1/documents/{ACME_ROADMAP}/chunks").json()
            assert view["disabled"] == 1 and view["documents"][0]["chunks"][0]["enabled"] is False
        finally:
            acme.patch(chunk_url(ACME_ROADMAP, chunk["chunk_id"]), json={"enabled": True})
        wait_for("the enabled chunk is retrieved again", lambda: chunk["chunk_id"] in retrieved_ids(acme, query))
        assert acme.patch(chunk_url(ACME_ROADMAP, "no-such-chunk"), json={"enabled": False}).status_code == 404


def test_a_chunk_disabled_by_another_process_is_left_out_within_an_alias_poll(served):
    """Another API worker (or `rag` on the same catalog) disables it: this server re-reads it with the alias."""
    query = "When does Project Heron ship the quantum gadget?"
    plan = source_key("tenant=globex/globex-plan.md")
    elsewhere = Catalog(served.settings.resolved_catalog_url)
    with served.client("globex") as globex:
        (chunk,) = globex.get(f"/v1/documents/{plan}/chunks").json()["documents"][0]["chunks"]
        assert chunk["chunk_id"] in retrieved_ids(globex, query)
        try:
            elsewhere.set_chunk_enabled("globex", plan, chunk["chunk_id"], enabled=False)
            wait_for("the server leaves it out", lambda: chunk["chunk_id"] not in retrieved_ids(globex, query))
            assert elsewhere.disabled_chunks()["globex"] == frozenset({chunk["chunk_id"]})
        finally:
            elsewhere.set_chunk_enabled("globex", plan, chunk["chunk_id"], enabled=True)
        wait_for("the server returns it again", lambda: chunk["chunk_id"] in retrieved_ids(globex, query))
    elsewhere.engine.dispose()


def test_explained_retrieval_shows_each_lists_scores_and_ranks_and_weights_are_bounded(served):
    with served.client() as client:
        body = client.post(
            "/v1/retrieve",
            json={"query": "Milvus Lite file", "mode": "hybrid", "top_k": 5, "explain": True, "dense_weight": 0.8},
        ).json()
        assert body["fusion"]["dense_weight"] == 0.8 and body["fusion"]["method"] in ("convex", "rrf")
        assert body["fusion"]["head_bonus"] == 0.02  # the served default travels with the explanation
        scores = [chunk["scores"] for chunk in body["chunks"]]
        assert all(s["dense_rank"] or s["bm25_rank"] for s in scores)
        assert any(s["dense_score"] is not None and s["bm25_score"] is not None for s in scores)
        plain = client.post("/v1/retrieve", json={"query": "Milvus Lite file"}).json()
        assert plain["fusion"] is None and plain["chunks"][0]["scores"] is None
        refused = client.post("/v1/retrieve", json={"query": "Milvus", "dense_weight": 1.5})
        assert refused.status_code == 422 and "dense_weight" in refused.json()["detail"]


def test_a_follow_up_is_condensed_answered_from_the_right_document_and_kept_per_user(served):
    with served.client() as client:
        created = client.post("/v1/conversations", json={}, params={"user": "ana"})
        assert created.status_code == 201, created.text
        conversation = created.json()["conversation_id"]
        messages = f"/v1/conversations/{conversation}/messages"
        first = client.post(messages, params={"user": "ana"}, json={"question": "How does the embedding cache work?"})
        assert first.status_code == 200, first.text
        follow_up = client.post(messages, params={"user": "ana"}, json={"question": "and what does it key on?"})
        assert follow_up.status_code == 200, follow_up.text
        turn = follow_up.json()
        assert turn["standalone_query"].startswith("embedding cache") and turn["question"] == "and what does it key on?"
        # The answer is cited from the right document and holds the sentence that answers the follow-up.
        first_cited = turn["citations"][0]["number"]
        assert turn["sources"][first_cited - 1]["source"] == "embedding-cache.pdf", turn["answer"]
        assert "keyed by the model version" in turn["answer"], turn["answer"]
        cited = {citation["number"] for citation in turn["citations"]}
        assert {span["number"] for span in turn["cited"]} == cited
        for span in turn["cited"]:
            assert span["end_char"] <= len(turn["sources"][span["number"] - 1]["text"])

        stored = client.get(f"/v1/conversations/{conversation}", params={"user": "ana"}).json()
        assert [t["question"] for t in stored["turns"]] == [
            "How does the embedding cache work?",
            "and what does it key on?",
        ]
        assert stored["title"] == "How does the embedding cache work?"
        listed = client.get("/v1/conversations", params={"user": "ana"}).json()["conversations"]
        assert conversation in [item["conversation_id"] for item in listed]
        assert client.get(f"/v1/conversations/{conversation}", params={"user": "bob"}).status_code == 404
        feedback = {"query_id": turn["query_id"], "rating": 4, "is_relevant": True, "comment": "right document"}
        assert client.post("/v1/feedback", json=feedback).status_code == 201
    with served.client("acme") as acme:
        assert acme.get(f"/v1/conversations/{conversation}", params={"user": "ana"}).status_code == 404
        assert (
            acme.post(
                f"/v1/conversations/{conversation}/messages", params={"user": "ana"}, json={"question": "hi"}
            ).status_code
            == 404
        )
