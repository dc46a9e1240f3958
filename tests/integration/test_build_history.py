"""Promotion, rejection and rollback recorded in the collection properties of a real Milvus Lite file."""

import pytest

from rag_core.promotion import CANDIDATE, PROMOTED, REJECTED, RETIRED, builds, promote, recorded_ndcg, reject, rollback
from rag_core.store import IndexBuild, MilvusStore, milvus_client


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
