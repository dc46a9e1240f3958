"""Document entries (rag_core.chunking): each document's whole text indexed for BM25 beside its chunks. BM25 alone
ranks documents by them and shows each one's best chunk; dense and hybrid never see them; both engines agree on
a real Milvus Lite file; a build made without them keeps ranking chunks."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from rag_core.chunking import ChunkingConfig, chunk_documents
from rag_core.documents import Document
from rag_core.embedding import Embedder
from rag_core.indexing import milvus_rows
from rag_core.retrieval import Retriever
from rag_core.search.filters import SearchFilter
from rag_core.search.memory import MemoryIndex, rows_table
from rag_core.settings import bundled_model_dir
from tests.support.search_index import BUILD, DIMENSION, Index

FILLER = "The committee reviewed the annual budget report and agreed on the next steps. "
QUERY = "zebra quokka"
CHUNKING = ChunkingConfig(max_tokens=64, overlap_tokens=0, model_limit=254)


def documents() -> list[Document]:
    """`split` holds both query words, one in each of its two chunks; `zebra-note` and `quokka-note` are one
    shorter chunk with one word each, so a chunk of theirs beats either chunk of `split`, while `split` as a
    whole document (both words) beats them."""

    def document(doc_id: str, text: str) -> Document:
        return Document(doc_id, "notes", "default", "notes.jsonl", "", text, "jsonl", 0.0, doc_id)

    return [
        document("split", FILLER * 3 + "A zebra was seen. " + FILLER * 3 + "A quokka was seen. " + FILLER),
        document("zebra-note", FILLER * 2 + "A zebra was seen."),
        document("quokka-note", FILLER * 2 + "A quokka was seen."),
        *(document(f"minutes-{i}", FILLER * (2 + i % 3) + f"Item {i} was closed.") for i in range(12)),
    ]


def build(root, entries: bool) -> tuple[Index, list[dict]]:
    tokenizer = Embedder(bundled_model_dir()).tokenizer
    docs = documents()
    chunks = chunk_documents(docs, tokenizer, replace(CHUNKING, document_entries=entries))
    vectors = np.random.default_rng(3).normal(size=(len(chunks), DIMENSION)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    rows = milvus_rows(chunks, vectors, {document.doc_id: document for document in docs})
    index = Index(root, build=replace(BUILD, chunking=CHUNKING.describe(), document_entries=entries))
    index.write(rows)
    return index, rows


@pytest.fixture(scope="module")
def with_entries(tmp_path_factory) -> tuple[Index, list[dict]]:
    return build(tmp_path_factory.mktemp("entries"), entries=True)


def bm25(searcher, search_filter: SearchFilter | None = None, top_k: int = 5):
    return Retriever(searcher).retrieve(QUERY, None, top_k, "bm25", search_filter or SearchFilter("default"))


def by_score(chunks, field: str) -> list[tuple[float, set[str]]]:
    """The results as groups of equal score, best first: equal scores are ordered by each engine's own tie-break
    (the in-memory engine's is the chunk id, Milvus Lite's the order rows were written in)."""
    groups: dict[float, set[str]] = {}
    for chunk in chunks:
        groups.setdefault(round(chunk.score, 3), set()).add(getattr(chunk, field))
    return list(groups.items())


def test_bm25_ranks_whole_documents_and_shows_each_ones_best_chunk_on_both_engines(with_entries):
    index, rows = with_entries
    split_chunks = [row for row in rows if row["doc_id"] == "split" and row["position"] >= 0]
    assert len(split_chunks) >= 2 and sum(1 for row in rows if row["position"] < 0) == len(documents())
    memory = index.memory.served().searcher
    found = bm25(memory)
    # The document holding both words comes first, shown as one of its chunks (a real passage, not the entry).
    assert found[0].doc_id == "split" and {chunk.doc_id for chunk in found[1:3]} == {"zebra-note", "quokka-note"}
    assert len({chunk.doc_id for chunk in found}) == len(found)  # one chunk per document
    best = found[0]
    assert best.chunk_id in {row["chunk_id"] for row in split_chunks} and best.text
    assert "zebra" in best.text or "quokka" in best.text
    assert [chunk.bm25_rank for chunk in found] == list(range(1, len(found) + 1))
    with index.milvus() as engine:
        # Milvus scores an entry with statistics over every row of its collection (chunks too), the in-memory
        # engine with the entries' own: the same documents in the same order, the scores apart.
        milvus = [group for _, group in by_score(bm25(engine.served().searcher), "doc_id")]
        assert milvus == [group for _, group in by_score(found, "doc_id")]


def test_the_in_memory_engine_scores_an_entry_as_bm25_over_whole_documents_alone(with_entries):
    """An entry's BM25 figures (document count, average length, document frequencies) are the entries' own:
    a BM25-only search scores each document exactly as an index of the whole documents alone does (the naive
    baseline's), not with figures diluted by every chunk that repeats its words."""
    index, rows = with_entries
    served = index.memory.served().searcher
    alone = MemoryIndex.build(*rows_table([row for row in rows if row["position"] < 0]), analyzer=served.analyzer)
    expected = {hit.fields["doc_id"]: round(hit.score, 4) for hit in alone.search_bm25(QUERY, 20, SearchFilter())}
    found = {chunk.doc_id: round(chunk.score, 4) for chunk in bm25(served, top_k=20)}
    assert len(found) >= 3 and found == expected
    diluted = served.statistics["default"]  # every row: the entries' words counted again in their chunks
    assert diluted.documents > served.entry_statistics["default"].documents == len(documents())


def test_without_entries_bm25_ranks_chunks_and_a_one_word_note_wins(tmp_path):
    index, rows = build(tmp_path, entries=False)
    assert all(row["position"] >= 0 for row in rows)
    found = bm25(index.memory.served().searcher)
    assert found[0].doc_id in {"zebra-note", "quokka-note"}  # what document entries correct
    with index.milvus() as engine:
        assert by_score(bm25(engine.served().searcher), "chunk_id") == by_score(found, "chunk_id")


def test_dense_hybrid_and_the_chunk_viewer_never_see_an_entry_but_a_purge_does(with_entries):
    index, rows = with_entries
    entry_ids = {row["chunk_id"] for row in rows if row["position"] < 0}
    vector = np.ones(DIMENSION, np.float32) / np.sqrt(DIMENSION)
    memory = index.memory.served().searcher
    with index.milvus() as engine:
        milvus = engine.served().searcher
        for searcher in (memory, milvus):
            for mode in ("dense", "hybrid"):
                found = Retriever(searcher).retrieve(QUERY, vector.tolist(), 50, mode, SearchFilter("default"))
                assert found and not {chunk.chunk_id for chunk in found} & entry_ids, mode
                assert all(chunk.text for chunk in found)
            one_source = SearchFilter("default", (("source_key", ("notes",)),))
            shown = {row["chunk_id"] for row in searcher.matching_rows(one_source.reading("chunks"))}
            everything = {row["chunk_id"] for row in searcher.matching_rows(one_source)}
            assert shown == {row["chunk_id"] for row in rows} - entry_ids and everything - shown == entry_ids


def test_a_document_whose_matching_chunks_are_disabled_is_not_shown_through_its_entry(with_entries):
    index, rows = with_entries
    hidden = frozenset(row["chunk_id"] for row in rows if row["doc_id"] == "split" and row["position"] >= 0)
    with index.milvus() as engine:
        for searcher in (index.memory.served().searcher, engine.served().searcher):
            found = bm25(searcher, SearchFilter("default").excluding(hidden))
            assert {chunk.doc_id for chunk in found[:2]} == {"zebra-note", "quokka-note"}
            assert "split" not in {chunk.doc_id for chunk in found}
