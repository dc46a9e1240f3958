"""The two search engines against a real Milvus Lite: the in-memory engine (faiss + corpus-wide BM25, fed by
the search log) must answer like Milvus, stay fresh while writes land, and keep tenants apart."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from rag_core.indexing import sync_partitions
from rag_core.retrieval import FusionConfig, Retriever
from rag_core.search.analyzer import ENGLISH, analyzed, term_counts, term_matrix
from rag_core.search.engines import IndexConnection
from rag_core.search.filters import SearchFilter
from rag_core.search.log import SearchLog
from rag_core.settings import Settings
from rag_core.store import MilvusStore, milvus_client
from tests.serving_server import free_port
from tests.support.processes import stop_process
from tests.support.search_index import BUILD, DIMENSION, Index, rows_for, scifact
from tests.support.waiting import wait_for

# The served fusion, with fewer candidates per list: under a filter that leaves ~100 rows, Milvus' HNSW returns
# only ~96 of them at depth 100 (an approximate graph), which moves min-max normalisation.
FUSION = FusionConfig(method="convex", dense_weight=0.55, bm25_weight=0.45, candidates=30)


def unit_vectors(count: int, seed: int) -> np.ndarray:
    vectors = np.random.default_rng(seed).normal(size=(count, DIMENSION)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def top_ids(searcher, mode: str, query: str, vector, search_filter: SearchFilter, k: int = 10) -> list[str]:
    chunks = Retriever(searcher, FUSION).retrieve(query, vector, k, mode, search_filter)  # type: ignore[arg-type]
    return [chunk.chunk_id for chunk in chunks]


@pytest.fixture(scope="module")
def one_tenant(tmp_path_factory) -> tuple[Index, list[dict], np.ndarray]:
    records = scifact(400)
    vectors = unit_vectors(len(records), seed=1)
    index = Index(tmp_path_factory.mktemp("one-tenant"))
    index.write(rows_for(records, vectors, lambda _: "default"))
    return index, records, vectors


@pytest.fixture(scope="module")
def two_tenants(tmp_path_factory) -> tuple[Index, list[dict], np.ndarray]:
    records = scifact(400)
    vectors = unit_vectors(len(records), seed=2)
    index = Index(tmp_path_factory.mktemp("two-tenants"))
    index.write(rows_for(records, vectors, lambda i: "acme" if i % 3 else "globex"))
    return index, records, vectors


def queries(records: list[dict], vectors: np.ndarray, count: int = 12):
    noise = unit_vectors(count, seed=9)
    for i in range(count):
        vector = vectors[i * 7] + 0.4 * noise[i]
        yield records[i * 7]["title"], (vector / np.linalg.norm(vector)).tolist()


FILTERS = [
    {},
    {"source_key": ["source-1", "source-2"]},
    {"source": "source-3.jsonl"},
]


def test_memory_engine_matches_milvus_top_10_in_every_mode_and_filter(one_tenant):
    index, records, vectors = one_tenant
    memory = index.memory.served()
    with index.milvus() as engine:
        milvus = engine.served()
        assert milvus.collection == memory.collection and milvus.rows == memory.rows == len(records)
        compared = 0
        for query, vector in queries(records, vectors):
            for filters in FILTERS:
                search_filter = SearchFilter.parse(filters, "default")
                for mode in ("dense", "bm25", "hybrid"):
                    expected = top_ids(milvus.searcher, mode, query, vector, search_filter)
                    found = top_ids(memory.searcher, mode, query, vector, search_filter)
                    assert found == expected, (mode, query, filters)
                    compared += 1
    assert compared == 12 * len(FILTERS) * 3


def test_a_stemmed_build_finds_any_word_form_and_both_engines_agree(tmp_path):
    """A build with the English analyzer stores stems; each engine analyzes the query by the build's record."""
    records = scifact(200)
    vectors = unit_vectors(len(records), seed=3)
    index = Index(tmp_path, build=replace(BUILD, chunking="tokens64-overlap8-stem", bm25_analyzer=ENGLISH))
    index.write(rows_for(records, vectors, lambda _: "default", analyzer=ENGLISH))
    words = {word for r in records for word in term_counts(f"{r['title']}\n{r['text']}")}
    holding_methyl = {r["_id"] for r in records if "methyl" in analyzed(r["text"], ENGLISH).split()}
    memory = index.memory.served()
    with index.milvus() as engine:
        milvus = engine.served()
        assert memory.searcher.analyzer == milvus.searcher.analyzer == ENGLISH
        # No abstract says "methylating"; the seven that say "methylation", "methylated" … are found by it.
        assert "methylating" not in words and len(holding_methyl) == 7
        for searcher in (memory.searcher, milvus.searcher):
            found = Retriever(searcher, FUSION).retrieve("Methylating", None, 20, "bm25", SearchFilter("default"))
            assert {chunk.doc_id for chunk in found} == holding_methyl
        for query, vector in queries(records, vectors):
            for mode in ("bm25", "hybrid"):
                search_filter = SearchFilter("default")
                expected = top_ids(milvus.searcher, mode, query, vector, search_filter)
                assert top_ids(memory.searcher, mode, query, vector, search_filter) == expected, (mode, query)


def test_disabled_chunks_are_excluded_by_either_engine_and_a_document_reads_the_same(one_tenant):
    index, records, vectors = one_tenant
    memory = index.memory.served()
    with index.milvus() as engine:
        milvus = engine.served()
        for query, vector in list(queries(records, vectors))[:4]:
            for mode in ("dense", "bm25", "hybrid"):
                best_two = top_ids(memory.searcher, mode, query, vector, SearchFilter("default"), k=2)
                hidden = SearchFilter("default").excluding(frozenset(best_two))
                for searcher in (memory.searcher, milvus.searcher):
                    found = top_ids(searcher, mode, query, vector, hidden)
                    assert len(found) == 10 and not set(best_two) & set(found), (mode, query)
        # What the chunk viewer reads: one source's rows, within the tenant, alike from both engines.
        one_source = SearchFilter("default", (("source_key", ("source-1",)),))
        rows = {row["chunk_id"]: row for row in memory.searcher.matching_rows(one_source)}
        assert len(rows) == 100 and {row["source_key"] for row in rows.values()} == {"source-1"}
        assert {row["chunk_id"]: row for row in milvus.searcher.matching_rows(one_source)} == rows
        assert memory.searcher.matching_rows(SearchFilter("acme", one_source.fields)) == []


def test_a_tenant_sees_only_its_own_chunks_through_either_engine(two_tenants):
    index, records, vectors = two_tenants
    globex_docs = [f"{r['_id']}" for i, r in enumerate(records) if i % 3 == 0][:5]
    hostile = [{}, *FILTERS[1:], {"doc_id": globex_docs}, {"title": records[0]["title"]}]
    memory = index.memory.served()
    with index.milvus() as engine:
        milvus = engine.served()
        for query, vector in queries(records, vectors):
            for filters in hostile:
                search_filter = SearchFilter.parse(filters, "acme")
                for mode in ("dense", "bm25", "hybrid"):
                    for searcher in (memory.searcher, milvus.searcher):
                        chunks = Retriever(searcher, FUSION).retrieve(query, vector, 20, mode, search_filter)
                        assert {chunk.tenant for chunk in chunks} <= {"acme"}, (mode, filters)
                # Dense ranks by the same cosine in both engines, whatever the tenant mix.
                dense = [top_ids(s, "dense", query, vector, search_filter) for s in (memory.searcher, milvus.searcher)]
                assert dense[0] == dense[1]
    # The same chunks for the tenant's BM25 top 10 in both engines (Milvus Lite keeps BM25 statistics per
    # partition-key segment rather than per tenant, so scores differ slightly; the sets nearly agree).
    overlaps = []
    with index.milvus() as engine:
        milvus = engine.served()
        for query, _ in queries(records, vectors):
            search_filter = SearchFilter("acme")
            ours = set(top_ids(memory.searcher, "bm25", query, None, search_filter))
            theirs = set(top_ids(milvus.searcher, "bm25", query, None, search_filter))
            overlaps.append(len(ours & theirs) / max(1, len(theirs)))
    assert np.mean(overlaps) >= 0.8, overlaps


def test_bm25_uses_corpus_wide_statistics_for_a_document_added_after_the_build(tmp_path):
    index = Index(tmp_path)
    records = scifact(300)
    index.write(rows_for(records, unit_vectors(300, seed=3), lambda _: "default"))
    new = {
        "_id": "late-arrival",
        "title": "Zyxoquine",
        "text": "Zyxoquine dosing: zyxoquine lowered blood pressure; zyxoquine was well tolerated and zyxoquine works.",
    }
    index.write(rows_for([new], unit_vectors(1, seed=4), lambda _: "default"))  # a segment of its own
    query = "zyxoquine blood pressure treatment in patients with hypertension"
    ranked = top_ids(index.memory.served().searcher, "bm25", query, None, SearchFilter("default"))
    assert ranked[0] == "late-arrival#0"
    with index.milvus() as engine:  # recorded for the README: Milvus Lite scores a new segment on its own
        milvus_ranked = top_ids(engine.served().searcher, "bm25", query, None, SearchFilter("default"), k=301)
    print(f"Milvus Lite's own BM25 ranks the new document #{milvus_ranked.index('late-arrival#0') + 1}")


def test_writes_are_searchable_within_the_freshness_bound_while_another_thread_queries(tmp_path):
    index = Index(tmp_path)
    records = scifact(1300)
    vectors = unit_vectors(len(records), seed=5)
    base = rows_for(records[:300], vectors[:300], lambda _: "default")
    index.write(base)
    index.memory.served()
    added = rows_for(records[300:], vectors[300:], lambda _: "default")
    deleted = {row["chunk_id"] for row in base[:50]}
    seen_deleted_after_delete = []
    queries_after_delete = []
    delete_done = threading.Event()
    stop = threading.Event()

    def reader() -> None:  # a serving thread: one snapshot per query, as the API does
        while not stop.is_set():
            served = index.memory.served()
            ids = {hit.chunk_id for hit in served.searcher.search_bm25("cells", 400, SearchFilter("default"))}
            if delete_done.is_set() and served.rows == 1250:
                queries_after_delete.append(1)
                if ids & deleted:
                    seen_deleted_after_delete.append(ids & deleted)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        with index.connection.store() as store:
            name = store.alias_target()
            store.upsert(name, added)
            written = time.monotonic()
            visible = wait_for("1,000 upserted chunks searchable", lambda: index.memory.served().rows == 1300, 5)
            upsert_lag = time.monotonic() - written
            store.delete_chunks(name, sorted(deleted))
            written = time.monotonic()
            wait_for("50 deleted chunks gone", lambda: index.memory.served().rows == 1250, 5)
            delete_lag = time.monotonic() - written
            delete_done.set()
        assert visible and upsert_lag <= 5 and delete_lag <= 5
        # The reader keeps querying the deleted state for a while: 20 queries, whatever the machine's speed.
        wait_for("the reader queries after the delete", lambda: len(queries_after_delete) >= 20, 30)
    finally:
        stop.set()
        thread.join()
    assert not seen_deleted_after_delete
    dense = index.memory.served().searcher.search_dense(vectors[0], 20, SearchFilter("default"))
    assert base[0]["chunk_id"] not in {hit.chunk_id for hit in dense}
    assert added[0]["chunk_id"] in {
        hit.chunk_id for hit in index.memory.served().searcher.search_dense(vectors[300], 5, SearchFilter("default"))
    }


def test_a_reindexed_document_is_served_whole_old_or_whole_new_never_a_part(tmp_path):
    """The indexer writes a changed document's new chunks before it deletes the old ones, and the search log
    carries both as one change: a filtered reader counts 7 chunks (old) or 9 (new), never a part."""
    index = Index(tmp_path)
    records = scifact(16)
    vectors = unit_vectors(len(records), seed=11)

    def version(records_slice: list[dict], vectors_slice: np.ndarray, tag: str) -> list[dict]:
        rows = rows_for(records_slice, vectors_slice, lambda _: "default")
        for position, row in enumerate(rows):
            row.update(chunk_id=f"doc-{tag}#{position}", doc_id="doc", source_key="doc-source", position=position)
        return rows

    old, new = version(records[:7], vectors[:7], "old"), version(records[7:], vectors[7:], "new")
    index.write(old)
    index.memory.served()
    counts: list[int] = []
    stop = threading.Event()
    only_doc = SearchFilter.parse({"doc_id": "doc"}, "default")

    def reader() -> None:
        while not stop.is_set():
            hits = index.memory.served().searcher.search_dense(vectors[0], 50, only_doc)
            counts.append(len(hits))

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        with index.connection.store() as store:
            name = store.alias_target()
            for rows in (new, old, new):  # reindex three times while the reader queries
                stats = sync_partitions(store, name, {"doc-source": rows})
                assert stats.inserted == len(rows) and stats.deleted == 16 - len(rows)
                wanted = len(rows)
                wait_for(f"the reader sees {wanted} chunks", lambda wanted=wanted: counts[-1] == wanted, 10, 0.01)
    finally:
        stop.set()
        thread.join()
    assert set(counts) == {7, 9}, sorted(set(counts))


def test_an_alias_swap_under_load_serves_one_build_or_the_other_never_a_mix(tmp_path):
    index = Index(tmp_path)
    records = scifact(200)
    blue = index.write(rows_for(records, unit_vectors(200, seed=6), lambda _: "default", "blue-"), "idx__blue")
    green = index.write(rows_for(records, unit_vectors(200, seed=7), lambda _: "default", "green-"), "idx__green")
    builds_seen: list[set[str]] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            served = index.memory.served()
            chunks = Retriever(served.searcher, FUSION).retrieve("cells", unit_vectors(1, 8)[0], 10, "hybrid")
            builds_seen.append({chunk.chunk_id.split("-")[0] for chunk in chunks} | {served.collection})

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        with index.connection.store() as store:
            for target in (blue, green) * 3:
                store.point_alias(target)
                wait_for(f"readers serve {target}", lambda target=target: target in builds_seen[-1], 30, 0.01)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert {"blue", "idx__blue"} in builds_seen and {"green", "idx__green"} in builds_seen
    assert all(seen in ({"blue", "idx__blue"}, {"green", "idx__green"}) for seen in builds_seen)


def test_a_build_written_before_the_search_log_is_read_from_milvus_once(tmp_path):
    index = Index(tmp_path)
    records = scifact(100)
    with milvus_client(index.uri) as client:  # an older writer: no search log
        store = MilvusStore(client, "idx")
        name = store.ensure_collection(BUILD)
        store.upsert(name, rows_for(records, unit_vectors(100, seed=10), lambda _: "default"))
        store.point_alias(name)
    served = index.memory.served()
    assert served.collection == name and served.rows == 100
    assert SearchLog(tmp_path / "search").latest_base(name) is not None  # snapshotted for the next process
    index.write(rows_for(scifact(5, skip=100), unit_vectors(5, seed=11), lambda _: "default"), name)
    assert wait_for("later writes follow the log", lambda: index.memory.served().rows == 105, 5)


def test_auto_picks_memory_for_milvus_lite_as_a_file_and_as_a_server(tmp_path):
    assert IndexConnection(str(tmp_path / "m.db"), "", "idx", tmp_path / "search").engine == "memory"
    port = free_port()
    server = subprocess.Popen(
        [Path(sys.executable).with_name("milvus-lite"), "server", "--data-dir", str(tmp_path / "served.db"),
         "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        connection = IndexConnection(f"http://127.0.0.1:{port}", "", "idx", tmp_path / "search", lock_timeout_s=60)
        assert connection.engine == "memory"
        assert IndexConnection(connection.uri, "", "idx", tmp_path / "search", 60, "milvus").engine == "milvus"
        with connection.store() as store:
            assert store.changes is not None  # writes through the server are logged for the memory engine
    finally:
        stop_process(server)


def test_an_unknown_engine_or_backend_stops_at_start_up_naming_the_fix(tmp_path):
    with pytest.raises(ValueError, match="RAG_SEARCH_ENGINE='faiss' is not a search engine — use one of auto"):
        Settings(search_engine="faiss")
    with pytest.raises(ValueError, match="RAG_EMBEDDING_BACKEND='tensorrt' is not an embedding backend"):
        Settings(embedding_backend="tensorrt")
    result = subprocess.run(
        [Path(sys.executable).with_name("rag-serve"), "serve", "--port", str(free_port())],
        env={"RAG_SEARCH_ENGINE": "faiss", "RAG_DATA_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "RAG_SEARCH_ENGINE='faiss' is not a search engine" in result.stderr
    assert "Traceback" not in result.stderr


def test_one_analyzer_for_bulk_indexing_and_queries():
    texts = [f"{record['title']}\n{record['text']}" for record in scifact(1000)]
    counts, terms = term_matrix(texts)
    for row, text in enumerate(texts):
        bulk = {terms[column]: int(count) for column, count in zip(counts[row].indices, counts[row].data, strict=True)}
        assert bulk == dict(term_counts(text))
