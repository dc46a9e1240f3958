"""The promotion rules and the alias history they write, against a real Milvus Lite file."""

import pytest

from rag_core.evaluation import EvalDataset, restrict_to_documents
from rag_core.promotion import (
    CANDIDATE,
    PROMOTED,
    REJECTED,
    RETIRED,
    builds,
    gate,
    promote,
    recorded_ndcg,
    reject,
    rollback,
)
from rag_core.store import IndexBuild, MilvusStore, milvus_client


def test_the_gate_allows_the_margin_and_no_more():
    assert gate(0.60, None, 0.01).passed  # nothing promoted yet
    assert gate(0.695, 0.70, 0.01).passed
    refused = gate(0.68, 0.70, 0.01)
    assert not refused.passed and "more than 0.0100 below" in refused.reason


def test_restricting_a_dataset_to_indexed_documents_drops_unanswerable_queries():
    dataset = EvalDataset("d", {"q1": "a", "q2": "b"}, {"q1": {"d1": 1, "d2": 1}, "q2": {"d9": 1}}, {"q2": "x"})
    kept = restrict_to_documents(dataset, {"d1"})
    assert kept.qrels == {"q1": {"d1": 1}} and set(kept.queries) == {"q1"} and kept.answers == {}


@pytest.fixture
def store(tmp_path):
    with milvus_client(str(tmp_path / "milvus.db")) as client:
        yield MilvusStore(client, "rag_chunks")


def _build(store: MilvusStore, version: str) -> str:
    return store.ensure_collection(IndexBuild("m", f"m@{version}", 4, "tokens64-overlap8", "bundled:m", 64, 8))


def test_promote_reject_and_rollback_keep_a_history_in_collection_properties(store):
    blue, green, red = _build(store, "blue"), _build(store, "green"), _build(store, "red")
    assert promote(store, blue, 0.61) is None and store.alias_target() == blue
    assert recorded_ndcg(store, blue) == pytest.approx(0.61)
    store.update_record(green, status=CANDIDATE)
    assert promote(store, green, 0.66) == blue
    assert store.alias_target() == green
    assert store.record(blue).status == RETIRED
    reject(store, red, "nDCG@10 too low")
    statuses = {row["collection"]: row["status"] for row in builds(store)}
    assert statuses == {blue: RETIRED, green: PROMOTED, red: REJECTED}
    assert rollback(store) == (green, blue)
    assert store.alias_target() == blue and store.record(blue).status == PROMOTED
    with pytest.raises(RuntimeError, match="records no previous build"):
        rollback(store)  # blue was the first build
    with pytest.raises(RuntimeError, match="is served by the alias"):
        store.drop_collection(blue)
