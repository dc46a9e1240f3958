"""The console's chunk viewer, retrieval playground and conversations in headless Chromium, offline (only the
API answers), on the served index. Each page is screenshotted into the test artifacts (RAG_TEST_ARTIFACTS)."""

from __future__ import annotations

import httpx
import pytest
import sqlalchemy as sa
from dagster import AssetKey, AssetRecordsFilter

from rag_assets.cli import index
from rag_core.ids import source_key
from tests.e2e.test_console import console, screenshot, use_key  # noqa: F401 - the offline Chromium page fixture
from tests.e2e.test_web_page import page  # noqa: F401 - what `console` wraps
from tests.support.waiting import wait_for

pytestmark = pytest.mark.slow
ACME_ROADMAP = source_key("tenant=acme/acme-roadmap.md")
FALCON = "When does Project Falcon ship the quantum widget?"
# What a browser may wait for on a busy 2-core machine: a retrieval, or an answer with its condensation.
ANSWERED_WITHIN_MS = 120_000


def retrieved(served, tenant: str, query: str) -> set[str]:
    with served.client(tenant) as client:
        response = client.post("/v1/retrieve", json={"query": query, "top_k": 5})
    assert response.status_code == 200, response.text
    return {chunk["chunk_id"] for chunk in response.json()["chunks"]}


def disabled_in_dagster(served, partition: str) -> int:
    """The `disabled_chunks` of the partition's latest milvus_collection materialization."""
    records = served.instance.fetch_materializations(
        AssetRecordsFilter(asset_key=AssetKey("milvus_collection"), asset_partitions=[partition]), limit=1
    ).records
    return records[0].asset_materialization.metadata["disabled_chunks"].value


def test_chunk_viewer_shows_offsets_overlaps_and_token_counts(served, console):  # noqa: F811
    from playwright.sync_api import expect

    with httpx.Client(base_url=served.url, headers={"X-API-Key": served.keys["default"]}) as client:
        documents = client.get("/v1/documents", params={"status": "indexed", "limit": 200}).json()["documents"]
        corpus = next(d for d in documents if d["source"].endswith(".jsonl"))  # many records, some of many chunks
        view = client.get(f"/v1/documents/{corpus['doc_id']}/chunks").json()
    number, record = max(enumerate(view["documents"]), key=lambda item: len(item[1]["chunks"]))
    chunks = record["chunks"]
    assert len(chunks) > 1 and chunks[1]["start_char"] < chunks[0]["end_char"]  # neighbours overlap
    console.goto(f"{served.url}/console/chunks.html")
    use_key(console, served.keys["default"])
    expect(console.locator(f"#doc-select option[value='{corpus['doc_id']}']")).to_have_count(1)
    console.select_option("#doc-select", corpus["doc_id"])
    console.click("#show-chunks")
    console.select_option("#record-select", str(number))
    rows = console.locator("tr.chunk")
    expect(rows).to_have_count(len(chunks))
    for row, chunk in zip(rows.all(), chunks, strict=True):
        expect(row.locator(".offsets")).to_have_text(f"{chunk['start_char']}–{chunk['end_char']}")
        expect(row.locator(".tokens")).to_have_text(str(chunk["tokens"]))
    # The record's whole text, every chunk's range a highlighted piece of it and the overlaps marked.
    expect(console.locator(".source-text")).to_have_text(record["text"])
    expect(console.locator(".source-text .seg.overlap")).to_have_count(len(chunks) - 1)
    rows.nth(1).click()
    expect(console.locator(".source-text .seg.selected").first).to_be_visible()
    expect(console.locator("#summary")).to_contain_text(f"{view['disabled']} disabled")
    screenshot(console, "chunks")


def test_a_chunk_disabled_in_the_viewer_leaves_retrieval_and_stays_disabled_after_a_reindex(served, console):  # noqa: F811
    from playwright.sync_api import expect

    console.goto(f"{served.url}/console/chunks.html?doc={ACME_ROADMAP}")
    use_key(console, served.keys["acme"])
    row = console.locator("tr.chunk")
    expect(row).to_have_count(1)
    chunk_id = row.get_attribute("data-chunk-id")
    assert chunk_id in retrieved(served, "acme", FALCON)
    try:
        console.click("button[aria-label='Disable chunk 0']")
        expect(console.locator("#chunks-message")).to_contain_text("disabled: retrieval leaves it out")
        expect(row.locator(".state-disabled")).to_have_text("disabled")
        wait_for("the disabled chunk leaves retrieval", lambda: chunk_id not in retrieved(served, "acme", FALCON))

        index(served.settings, instance=served.instance)  # `rag index`: every partition materialized again
        assert disabled_in_dagster(served, ACME_ROADMAP) == 1
        console.reload()
        expect(row.locator(".state-disabled")).to_have_text("disabled")
        assert chunk_id not in retrieved(served, "acme", FALCON)
        screenshot(console, "chunks-disabled")
    finally:
        with served.client("acme") as acme:  # the shared index serves other tests: enabled again whatever happened
            acme.patch(f"/v1/documents/{ACME_ROADMAP}/chunks/{chunk_id.replace('#', '%23')}", json={"enabled": True})
    wait_for("the enabled chunk is retrieved again", lambda: chunk_id in retrieved(served, "acme", FALCON))


def test_playground_shows_dense_and_bm25_scores_side_by_side_for_two_configurations(served, console):  # noqa: F811
    from playwright.sync_api import expect

    console.goto(f"{served.url}/console/playground.html")
    use_key(console, served.keys["default"])
    console.fill("#pg-query", "What does the embedding cache key on?")
    console.select_option("#cfg-A-mode", "hybrid")
    console.fill("#cfg-A-dense_weight", "0.7")
    console.fill("#cfg-A-bm25_weight", "0.3")
    console.select_option("#cfg-B-mode", "bm25")
    console.click("#pg-run")
    hybrid, bm25 = console.locator("#result-A"), console.locator("#result-B")
    expect(hybrid.locator("tr.hit")).to_have_count(5, timeout=ANSWERED_WITHIN_MS)
    expect(bm25.locator("tr.hit")).to_have_count(5)
    expect(hybrid).to_contain_text("convex, dense 0.7 / BM25 0.3")
    # Hybrid knows both lists' scores and ranks; BM25 alone has no dense side.
    expect(hybrid.locator("td.dense").first).to_contain_text("(#")
    expect(hybrid.locator("td.bm25").first).to_contain_text("(#")
    expect(bm25.locator("td.bm25").first).to_contain_text("(#1)")
    expect(bm25.locator("td.dense").first).to_have_text("not found")
    expect(console.locator("#pg-message")).to_contain_text("in both top lists")
    # The relevance threshold is drawn over the dense similarities.
    expect(hybrid.locator("svg line.threshold")).to_have_count(1)
    expect(hybrid.locator(".threshold-note")).to_contain_text("Relevance threshold")
    screenshot(console, "playground")


def test_a_follow_up_in_a_conversation_is_answered_from_the_right_document_with_feedback(served, console):  # noqa: F811
    from playwright.sync_api import expect

    console.goto(f"{served.url}/console/conversations.html")
    use_key(console, served.keys["default"])
    console.fill("#chat-user", "e2e-chat")
    console.click("#user-form button")
    console.fill("#chat-question", "How does the embedding cache work?")
    console.click("#chat-ask")
    expect(console.locator("article.turn")).to_have_count(1, timeout=ANSWERED_WITHIN_MS)
    console.fill("#chat-question", "and what does it key on?")
    console.click("#chat-ask")
    expect(console.locator("article.turn")).to_have_count(2, timeout=ANSWERED_WITHIN_MS)
    follow_up = console.locator("article.turn").nth(1)
    expect(follow_up.locator(".standalone")).to_contain_text("embedding cache")
    # The sentence that answers the follow-up is cited, from the right document, and its citation leads there.
    card = follow_up.locator(".card", has=console.locator("mark.cited", has_text="keyed by the model version"))
    expect(card).to_have_count(1)
    expect(card).to_contain_text("embedding-cache.pdf")
    number = card.get_attribute("data-number")
    citation = follow_up.locator(f".answer a.cite[data-source='{number}']").first
    citation.click()
    expect(card).to_have_class("card flash")

    follow_up.locator("button.thumb-up").click()
    expect(follow_up.locator("button.thumb-up")).to_have_attribute("aria-pressed", "true")
    follow_up.locator("select.rating").select_option("4")
    follow_up.locator("textarea.comment").fill("found the right passage")
    follow_up.locator("button.send-feedback").click()
    expect(follow_up.locator(".feedback-status")).to_have_text("Thanks: feedback saved.")
    expect(console.locator("#conversation-list li")).to_have_count(1)
    screenshot(console, "conversations")

    query_id = follow_up.get_attribute("data-query-id")
    engine = sa.create_engine(served.settings.resolved_serving_db_url)
    with engine.connect() as connection:
        row = connection.execute(
            sa.text("SELECT rating, is_relevant, comment FROM rag_feedback WHERE query_id = :query_id"),
            {"query_id": query_id},
        ).one()
    engine.dispose()
    assert tuple(row) == (4, True, "found the right passage")
