"""The typed collection record, the build spec a run carries, and the row check that must be able to fail."""

import pytest

from rag_core.build_record import BuildRecord, changes
from rag_core.chunking import ChunkingConfig
from rag_core.indexing import check_rows
from rag_core.promotion import BuildSpec, spec_of
from rag_core.store import IndexBuild


def test_a_record_round_trips_through_collection_properties():
    record = BuildRecord(
        embedding_model="m",
        embedding_version="m@abc+onnx-int8",
        model_reference="models:/rag-embedder/3",
        dimension=384,
        chunking="tokens128-overlap16",
        chunk_max_tokens=128,
        chunk_overlap_tokens=16,
        status="candidate",
        eval_ndcg_at_10=0.61234567,
        expected_rows=42,
        reranker="models:/rag-reranker/2",
        rerank_weights='{"hybrid": 0.3}',
    )
    properties = record.to_properties()
    assert all(key.startswith("rag.") and isinstance(value, str) for key, value in properties.items())
    assert BuildRecord.from_properties(properties) == BuildRecord(**{**record.__dict__, "eval_ndcg_at_10": 0.612346})
    assert BuildRecord.from_properties({}) == BuildRecord()  # a collection from before the record: nothing known
    # what a build writes at creation is what the record of the collection reads back
    build = IndexBuild("m", "m@abc", 4, "tokens64-overlap8", "bundled:m", 64, 8)
    assert BuildRecord.from_properties(build.properties()) == build.record()


def test_partial_updates_name_fields_and_clear_with_none():
    assert changes(status="promoted", expected_rows=None) == {"rag.status": "promoted", "rag.expected_rows": ""}
    assert BuildRecord.from_properties(changes(expected_rows=None)).expected_rows is None
    with pytest.raises(TypeError, match="expected_row: not fields of BuildRecord"):
        changes(expected_row=3)


def test_the_spec_a_run_carries_survives_its_tag_and_reads_a_collection():
    spec = BuildSpec("bundled:m", 128, 16, "onnx", "m@abc+onnx", "rag_chunks__m", served="rag_chunks__m")
    assert BuildSpec.from_json(spec.to_json()) == spec
    assert spec.chunking(254).describe() == "tokens128-overlap16-docs-stem"
    built = spec_of(IndexBuild("m", "m@abc+onnx", 4, "tokens128-overlap16", "bundled:m", 128, 16).properties(), "x")
    assert (built.model, built.backend, built.embedding_version) == ("bundled:m", "onnx", "m@abc+onnx")
    # A build from before document entries and stemming records neither, and its spec keeps writing it so.
    assert not built.document_entries and built.bm25_analyzer == "standard"
    assert built.chunking(254).describe() == "tokens128-overlap16"
    entries = IndexBuild(
        "m", "m@abc", 4, "tokens128-overlap16-docs-stem", "bundled:m", 128, 16, True, bm25_analyzer="english"
    )
    assert spec_of(entries.properties(), "x").chunking(254) == ChunkingConfig(128, 16, 254, document_entries=True)


def test_the_row_check_fails_when_nothing_vouches_for_the_collection():
    three_rows = {"a": 2, "b": 1}
    empty_catalog = check_rows(three_rows, {}, expected_rows=None)
    assert not empty_catalog.passed and "catalog records no indexed source" in empty_catalog.reason
    assert empty_catalog.rows == 3 and empty_catalog.sources_not_in_catalog == ["a", "b"]
    assert check_rows(three_rows, {"a": 2, "b": 1}, None).passed
    mismatch = check_rows(three_rows, {"a": 2, "b": 2}, None)
    assert not mismatch.passed and mismatch.mismatched_sources == ["b"]
    orphan = check_rows({**three_rows, "gone": 4}, {"a": 2, "b": 1}, None)
    assert not orphan.passed and orphan.sources_not_in_catalog == ["gone"]
    assert check_rows(three_rows, {}, expected_rows=3).passed  # a one-pass build vouches for itself
    assert not check_rows(three_rows, {}, expected_rows=4).passed
    assert not check_rows({}, {}, expected_rows=0).passed  # an empty build is a failure, not a pass
