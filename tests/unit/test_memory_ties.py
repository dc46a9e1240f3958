"""Equal scores in the in-memory engine: the order is the chunk ids', whatever the rows' layout. A model that
gives many passages the same vector (or BM25 the same score) must not let write order, segment merges or a
reload decide which of them a user sees, or an evaluation of the same build would vary from run to run."""

from __future__ import annotations

import numpy as np

from rag_core.search.filters import SearchFilter
from rag_core.search.memory import MemoryIndex, rows_table
from tests.support.search_index import rows_for, scifact

TIED = 40  # rows sharing one vector and one text: every search ties them


def tied_rows() -> list[dict]:
    records = [{**record, "title": "Tied", "text": "the same words"} for record in scifact(TIED)]
    vectors = np.tile(np.eye(8, dtype=np.float32)[0], (TIED, 1))
    return rows_for(records, vectors, lambda _: "default")


def index_of(rows: list[dict], segments: int) -> MemoryIndex:
    """The rows written in `segments` changes (one segment each until merged)."""
    index = MemoryIndex.build(*rows_table([]), dimension=8)
    for seq, part in enumerate(np.array_split(np.arange(len(rows)), segments), start=1):
        table, vectors = rows_table([rows[i] for i in part])
        index = index.apply(table, vectors, [], seq)
    return index


def test_tied_rows_come_in_chunk_id_order_in_any_layout() -> None:
    rows = tied_rows()
    shuffled = [rows[i] for i in np.random.default_rng(5).permutation(len(rows))]
    expected = sorted(row["chunk_id"] for row in rows)[:10]
    search = SearchFilter("default")
    layouts = [index_of(rows, 1), index_of(shuffled, 1), index_of(shuffled, 4), index_of(shuffled, 4).merge_small()]
    for layout in layouts:
        dense = layout.search_dense(np.eye(8, dtype=np.float32)[0], 10, search)
        bm25 = layout.search_bm25("same words", 10, search)
        assert [hit.chunk_id for hit in dense] == [hit.chunk_id for hit in bm25] == expected
        assert len({hit.score for hit in dense}) == 1  # truly tied, not ordered by score
