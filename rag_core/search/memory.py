"""The in-memory search index of one build: faiss for the dense side, a sparse term-frequency matrix for
BM25 with corpus-wide statistics, and masks for the tenant and metadata filters.

An index is a tuple of immutable segments plus, per segment, a mask of its live rows. A change (rows
upserted, ids deleted) never edits a segment: it returns a new `MemoryIndex` that shares the old segments,
with new live masks and one new small segment. A reader holds one `MemoryIndex` for a whole request, so
it sees one version of the build, never a mix, and writers never wait for readers.

Large segments search an HNSW graph; small ones (recent changes) and highly selective filters are
searched exactly with one matrix product over the allowed rows. Per query the work is O(postings of the
query terms) for BM25 and O(log n) for HNSW, plus O(n / 8) bytes for a filter bitmap.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp

from rag_core.search.analyzer import STANDARD, analyzed, idf, saturation, term_counts, term_matrix
from rag_core.search.filters import SearchFilter
from rag_core.store import OUTPUT_FIELDS, Hit

ROW_FIELDS = [*OUTPUT_FIELDS, "search_text"]
INT_FIELDS = ("position", "start_char", "end_char")
GRAPH_MIN_ROWS = 20_000  # below this an exact matrix product is as fast as the graph
EXACT_MAX_ALLOWED = 20_000  # a filter this selective is searched exactly, over the allowed rows only
HNSW_M = 16
HNSW_EF_CONSTRUCTION = 40
SMALL_SEGMENTS_MAX = 8  # more recent-change segments than this are merged into one
AVERAGE_DRIFT = 1e-3  # BM25 impacts are recomputed once a tenant's average length moved this much


def row_schema(fields: Sequence[str] = ROW_FIELDS) -> pa.Schema:
    return pa.schema([(name, pa.int64() if name in INT_FIELDS else pa.string()) for name in fields])


def rows_table(rows: Sequence[dict]) -> tuple[pa.Table, np.ndarray]:
    """(the fields a search returns, the dense vectors) of Milvus rows."""
    table = pa.Table.from_pylist([{name: row[name] for name in ROW_FIELDS} for row in rows], schema=row_schema())
    vectors = np.asarray([row["dense"] for row in rows], dtype=np.float32)
    return table, vectors.reshape(len(rows), -1) if rows else np.zeros((0, 0), np.float32)


@dataclass(frozen=True, eq=False)
class Segment:
    table: pa.Table
    vectors: np.ndarray
    vocabulary: dict[str, int]
    postings: sp.csc_matrix  # rows × terms, term frequencies
    lengths: np.ndarray  # tokens per row
    graph: faiss.Index | None = None

    @classmethod
    def build(cls, table: pa.Table, vectors: np.ndarray, graph: bool = True) -> Segment:
        """`graph=False` leaves a large segment without its HNSW graph, for a caller that merges it next."""
        counts, terms = term_matrix(table.column("search_text"))
        vocabulary = {term: column for column, term in enumerate(terms)}
        lengths = np.asarray(counts.sum(axis=1), dtype=np.float32).ravel()
        segment = cls(table, np.ascontiguousarray(vectors, dtype=np.float32), vocabulary, counts.tocsc(), lengths)
        segment = segment.entries_last()
        return segment.with_graph() if graph and len(table) >= GRAPH_MIN_ROWS else segment

    def entries_last(self) -> Segment:
        """The same rows with the document entries after every chunk: a search of chunks then reads a prefix
        of the vectors (`chunk_end`), not every row."""
        entries = self.document_rows
        if not entries.any() or entries[self.chunk_end :].all() or self.graph is not None:
            return self  # (a graph's ids are its row order: a segment with one keeps it)
        order = np.argsort(entries, kind="stable")
        return Segment(
            self.table.take(pa.array(order)),
            np.ascontiguousarray(self.vectors[order]),
            self.vocabulary,
            self.postings[order].tocsc(),
            self.lengths[order],
        )

    def with_graph(self) -> Segment:
        graph = faiss.IndexHNSWFlat(self.vectors.shape[1], HNSW_M, faiss.METRIC_INNER_PRODUCT)
        graph.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        graph.add(self.vectors)
        return replace(self, graph=graph, vectors=graph_vectors(graph))

    def __len__(self) -> int:
        return len(self.table)

    @cached_property
    def chunk_ids(self) -> list[str]:
        return self.table.column("chunk_id").to_pylist()

    @cached_property
    def id_ranks(self) -> np.ndarray:
        """Each row's place in chunk-id order: ties in a search are broken by chunk id, not by row order."""
        ranks = np.empty(len(self), np.int64)
        ranks[np.argsort(np.asarray(self.chunk_ids, dtype=str), kind="stable")] = np.arange(len(self))
        return ranks

    @cached_property
    def tenant_masks(self) -> dict[str, np.ndarray]:
        encoded = self.table.column("tenant").combine_chunks().dictionary_encode()
        codes = encoded.indices.to_numpy(zero_copy_only=False)
        return {tenant: codes == code for code, tenant in enumerate(encoded.dictionary.to_pylist())}

    def column_frequencies(self, rows: np.ndarray) -> dict[str, int]:
        """Document frequency of each term among these rows (a mask)."""
        if rows.all():
            per_term = np.diff(self.postings.indptr)
        else:
            per_term = np.diff(self.postings[np.flatnonzero(rows)].tocsc().indptr)
        return {term: int(per_term[j]) for term, j in self.vocabulary.items() if per_term[j]}

    def impacts(
        self, statistics: dict[str | None, Statistics], entries: dict[str | None, Statistics]
    ) -> sp.csc_matrix:
        """The BM25 saturation of every posting, each row normalised by its own tenant's average length: a chunk
        by that of every row (`statistics`), a document entry by that of the tenant's entries (`entries`)."""
        average = np.ones(len(self), np.float32)
        for tenant, mask in self.tenant_masks.items():
            average[mask] = (statistics.get(tenant) or EMPTY_STATISTICS).average_length or 1.0
            if self.chunk_rows is not None:  # the segment holds entries
                average[mask & self.document_rows] = (entries.get(tenant) or EMPTY_STATISTICS).average_length or 1.0
        rows = self.postings.indices
        data = saturation(self.postings.data, self.lengths[rows], average[rows]).astype(np.float32)
        return sp.csc_matrix((data, rows, self.postings.indptr), shape=self.postings.shape)

    @cached_property
    def positions(self) -> np.ndarray:
        """Each row's chunk position (0 = a document's first chunk, -1 = its entry)."""
        return self.table.column("position").to_numpy(zero_copy_only=False)

    @cached_property
    def document_rows(self) -> np.ndarray:
        """The document entries (position -1, rag_core.chunking)."""
        return self.positions < 0

    @cached_property
    def chunk_end(self) -> int:
        """Rows before the first document entry: every chunk (`entries_last`)."""
        return len(self) - int(self.document_rows.sum())

    @cached_property
    def chunk_rows(self) -> np.ndarray | None:
        """The chunks; None when every row is one (a build without document entries)."""
        return ~self.document_rows if self.document_rows.any() else None

    def impact_parts(
        self, statistics: dict[str | None, Statistics], entries: dict[str | None, Statistics]
    ) -> dict[str, ImpactPart]:
        impacts = self.impacts(statistics, entries)
        if self.chunk_rows is None:
            return {"all": ImpactPart(impacts, None)}
        parts = {}
        for kind, mask in (("chunks", self.chunk_rows), ("documents", self.document_rows)):
            rows = np.flatnonzero(mask)
            parts[kind] = ImpactPart(impacts[rows].tocsc(), rows)
        return parts

    def allowed(self, live: np.ndarray, search_filter: SearchFilter) -> np.ndarray:
        mask = live
        if search_filter.rows == "documents":
            mask = mask & self.document_rows
        elif search_filter.rows == "chunks" and self.chunk_rows is not None:
            mask = mask & self.chunk_rows
        if search_filter.tenant is not None:
            mask = mask & self.tenant_masks.get(search_filter.tenant, np.zeros(len(self), bool))
        for name, values in search_filter.fields:
            mask = mask & pc.is_in(self.table.column(name), value_set=pa.array(values)).to_numpy(
                zero_copy_only=False
            )
        return mask

    def dense(self, vector: np.ndarray, limit: int, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(rows, cosine scores) of the best `limit` allowed rows."""
        count = int(allowed.sum())
        if count == 0:
            return np.empty(0, np.int64), np.empty(0, np.float32)
        limit = min(limit, count)
        if self.graph is not None and count > EXACT_MAX_ALLOWED:
            selector = None
            if count < len(self):
                bitmap = np.packbits(allowed, bitorder="little")
                selector = faiss.IDSelectorBitmap(len(self), faiss.swig_ptr(bitmap))
            # A filter that hides most rows needs a wider beam to still find `limit` of the rest.
            ef = min(4096, int(max(64, limit) * max(1.0, 0.5 * len(self) / count)))
            params = faiss.SearchParametersHNSW(efSearch=ef, sel=selector)
            scores, rows = self.graph.search(vector[None, :], limit, params=params)
            keep = rows[0] >= 0
            return rows[0][keep].astype(np.int64), scores[0][keep]
        # Only chunks allowed (document entries come last): the vectors before them are all there is to read.
        end = self.chunk_end if not allowed[self.chunk_end :].any() else len(self)
        if count < end // 2:
            rows = np.flatnonzero(allowed[:end])
            scores = self.vectors[rows] @ vector
        else:
            rows = None
            scores = self.vectors[:end] @ vector
            scores = np.where(allowed[:end], scores, -np.inf)
        best = _top(scores, limit, self.id_ranks[rows] if rows is not None else self.id_ranks[:end])
        return (rows[best] if rows is not None else best), scores[best]

    def bm25(
        self,
        query: Counter[str],
        statistics: Statistics,
        impacts: sp.csc_matrix,
        limit: int,
        allowed: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(rows, BM25 scores) of the best `limit` allowed rows containing a query term."""
        columns, weights = [], []
        for term, repeats in query.items():
            column = self.vocabulary.get(term)
            if column is not None:
                columns.append(column)
                weights.append(repeats * idf(statistics.documents, statistics.frequencies.get(term, 0)))
        if not columns:
            return np.empty(0, np.int64), np.empty(0, np.float32)
        scores = impacts[:, columns] @ np.asarray(weights, np.float32)
        candidates = np.flatnonzero((scores > 0) & allowed)
        best = _top(scores[candidates], min(limit, len(candidates)), self.id_ranks[candidates])
        return candidates[best], scores[candidates][best]


@dataclass(frozen=True, eq=False)
class ImpactPart:
    """BM25 impacts of some of a segment's rows, and which rows (None: all of them, in order)."""

    impacts: sp.csc_matrix
    rows: np.ndarray | None


def graph_vectors(graph: faiss.IndexHNSWFlat) -> np.ndarray:
    """The graph's own copy of the vectors, as an array: exact searches use it, so a segment holds one copy."""
    storage = faiss.downcast_index(graph.storage)
    flat = faiss.rev_swig_ptr(storage.get_xb(), graph.ntotal * graph.d)
    return flat.reshape(graph.ntotal, graph.d)


def _top(scores: np.ndarray, limit: int, ranks: np.ndarray) -> np.ndarray:
    """Indices of the `limit` highest scores, best first; equal scores in the order of `ranks` (the rows'
    chunk ids), so that which of several tied rows are returned never depends on where they are stored."""
    if limit <= 0:
        return np.empty(0, np.int64)
    if limit < len(scores):
        kth = np.partition(scores, len(scores) - limit)[len(scores) - limit]  # the limit-th highest
        part = np.flatnonzero(scores >= kth)  # every row tied with it too
    else:
        part = np.arange(len(scores))
    return part[np.lexsort((ranks[part], -scores[part]))][:limit]


@dataclass(frozen=True)
class Statistics:
    """BM25 statistics over every live row of every segment, for one tenant (or all of them)."""

    documents: int
    total_length: float
    frequencies: dict[str, int]

    @property
    def average_length(self) -> float:
        return self.total_length / self.documents if self.documents else 0.0


EMPTY_STATISTICS = Statistics(0, 0.0, {})


class _StatisticsUpdate:
    """Per-tenant and overall statistics after removing and adding rows; copies only what it touches."""

    def __init__(self, current: dict[str | None, Statistics]) -> None:
        self.current = current
        self.changed: dict[str | None, list] = {}

    def _bucket(self, tenant: str | None) -> list:
        if tenant not in self.changed:
            old = self.current.get(tenant, EMPTY_STATISTICS)
            self.changed[tenant] = [old.documents, old.total_length, dict(old.frequencies)]
        return self.changed[tenant]

    def remove(self, tenant: str, length: float, terms: set[str]) -> None:
        for key in (tenant, None):
            bucket = self._bucket(key)
            bucket[0] -= 1
            bucket[1] -= length
            frequencies = bucket[2]
            for term in terms:
                frequencies[term] -= 1
                if not frequencies[term]:
                    del frequencies[term]

    def add(self, tenant: str, documents: int, length: float, frequencies: dict[str, int]) -> None:
        for key in (tenant, None):
            bucket = self._bucket(key)
            bucket[0] += documents
            bucket[1] += length
            for term, count in frequencies.items():
                bucket[2][term] = bucket[2].get(term, 0) + count

    def result(self) -> dict[str | None, Statistics]:
        merged = dict(self.current)
        for tenant, (documents, length, frequencies) in self.changed.items():
            if documents > 0:
                merged[tenant] = Statistics(documents, length, frequencies)
            else:
                merged.pop(tenant, None)
        return merged


@dataclass(frozen=True, eq=False)
class MemoryIndex:
    segments: tuple[Segment, ...]
    live: tuple[np.ndarray, ...]
    location: dict[str, tuple[int, int]]
    statistics: dict[str | None, Statistics]  # per tenant; None: every tenant
    seq: int = 0  # the last change of the build's log applied
    dimension: int = 0
    analyzer: str = STANDARD  # the build's BM25 analyzer: its rows were written with it, queries go through it
    # Per segment: (the segment, its tenants' average lengths, its BM25 impacts); shared by successive
    # versions of the index so that a change recomputes only what it moved.
    impact_cache: dict[int, tuple] = field(default_factory=dict, repr=False)
    # The same statistics over the document entries alone (rag_core.chunking): a search of the entries scores
    # them as whole-document BM25 does, not with figures diluted by every chunk of the same words.
    entry_statistics: dict[str | None, Statistics] = field(default_factory=dict)

    @cached_property
    def impacts(self) -> tuple[dict[str, ImpactPart], ...]:
        """Per segment, its BM25 impacts by kind of row: "all" for a segment of chunks only; "chunks" and
        "documents" for one with document entries, so that a search of one kind reads only its own postings
        (an entry repeats every word of its document's chunks)."""
        found = []
        for segment in self.segments:
            averages = np.asarray(
                [
                    (statistics.get(t) or EMPTY_STATISTICS).average_length
                    for statistics in (self.statistics, self.entry_statistics)
                    for t in segment.tenant_masks
                ]
            )
            cached = self.impact_cache.get(id(segment))
            if cached is not None and cached[0] is segment and np.allclose(cached[1], averages, rtol=AVERAGE_DRIFT):
                found.append(cached[2])
                continue
            impacts = segment.impact_parts(self.statistics, self.entry_statistics)
            self.impact_cache[id(segment)] = (segment, averages, impacts)
            found.append(impacts)
        live = {id(segment) for segment in self.segments}
        for key in [key for key in self.impact_cache if key not in live]:
            self.impact_cache.pop(key, None)
        return tuple(found)

    def prepare(self) -> None:
        """Compute now what searches read (BM25 impacts, each segment's chunk-id order), not in the first query."""
        self.impacts  # noqa: B018
        for segment in self.segments:
            segment.id_ranks  # noqa: B018

    @classmethod
    def build(
        cls, table: pa.Table, vectors: np.ndarray, seq: int = 0, dimension: int = 0, analyzer: str = STANDARD
    ) -> MemoryIndex:
        empty = cls((), (), {}, {}, seq, dimension or (vectors.shape[1] if len(vectors) else 0), analyzer)
        return empty.apply(table, vectors, [], seq) if len(table) else empty

    @classmethod
    def from_segment(cls, segment: Segment, seq: int) -> MemoryIndex:
        empty = cls((), (), {}, {}, seq, segment.vectors.shape[1])
        return empty._with(segment, [], [], seq)

    @property
    def rows(self) -> int:
        everyone = self.statistics.get(None)
        return everyone.documents if everyone else 0

    def apply(
        self,
        table: pa.Table | None,
        vectors: np.ndarray | None,
        deleted: Iterable[str],
        seq: int,
        graph: bool = True,
    ) -> MemoryIndex:
        """A new index with these rows upserted and these chunk ids deleted; this one is unchanged.
        `graph=False` defers HNSW graphs to the next `merge_small()` (replaying many changes at once)."""
        upserted = table.column("chunk_id").to_pylist() if table is not None and len(table) else []
        if upserted and len(set(upserted)) < len(upserted):  # the last version of a repeated id wins
            last = {chunk_id: row for row, chunk_id in enumerate(upserted)}
            keep = sorted(last.values())
            table, vectors = table.take(pa.array(keep)), vectors[keep]
        segment = Segment.build(table, vectors, graph) if upserted else None
        index = self._with(segment, list(deleted), upserted, seq)
        small = sum(s.graph is None for s in index.segments)
        return index.merge_small() if graph and small > SMALL_SEGMENTS_MAX else index

    def _with(self, segment: Segment | None, deleted: list[str], upserted: list[str], seq: int) -> MemoryIndex:
        live = list(self.live)
        location = dict(self.location)
        counts, entry_counts = _StatisticsUpdate(self.statistics), _StatisticsUpdate(self.entry_statistics)
        removed: dict[int, list[int]] = {}
        for chunk_id in [*deleted, *upserted]:
            where = location.pop(chunk_id, None)
            if where is not None:
                removed.setdefault(where[0], []).append(where[1])
        for index, rows in removed.items():
            live[index] = live[index].copy()
            live[index][rows] = False
            old = self.segments[index]
            taken = old.table.take(pa.array(rows, pa.int64()))
            terms_of, terms = term_matrix(taken.column("search_text"))
            for position, (row, tenant) in enumerate(zip(rows, taken.column("tenant").to_pylist(), strict=True)):
                row_terms = {terms[column] for column in terms_of[position].indices}
                counts.remove(tenant, float(old.lengths[row]), row_terms)
                if old.document_rows[row]:
                    entry_counts.remove(tenant, float(old.lengths[row]), row_terms)
        segments = list(self.segments)
        if segment is not None:
            segments.append(segment)
            live.append(np.ones(len(segment), bool))
            location.update((chunk_id, (len(segments) - 1, row)) for row, chunk_id in enumerate(segment.chunk_ids))
            for tenant, mask in segment.tenant_masks.items():
                length = float(segment.lengths[mask].sum())
                counts.add(tenant, int(mask.sum()), length, segment.column_frequencies(mask))
                entries = mask & segment.document_rows
                if entries.any():
                    length = float(segment.lengths[entries].sum())
                    entry_counts.add(tenant, int(entries.sum()), length, segment.column_frequencies(entries))
        dimension = self.dimension or (segment.vectors.shape[1] if segment is not None else 0)
        return replace(
            self,
            segments=tuple(segments),
            live=tuple(live),
            location=location,
            statistics=counts.result(),
            entry_statistics=entry_counts.result(),
            seq=seq,
            dimension=dimension,
        )

    def merge_small(self) -> MemoryIndex:
        """Merge every segment without a graph into one (live rows only): fewer segments to visit per query."""
        small = [i for i, segment in enumerate(self.segments) if segment.graph is None]
        kept = [i for i in range(len(self.segments)) if i not in small]
        merged = _merge([(self.segments[i], self.live[i]) for i in small])
        segments = [self.segments[i] for i in kept]
        live = [self.live[i] for i in kept]
        renumbered = {old: new for new, old in enumerate(kept)}
        location = {
            chunk_id: (renumbered[s], row) for chunk_id, (s, row) in self.location.items() if s in renumbered
        }
        if merged is not None:
            location.update((chunk_id, (len(segments), row)) for row, chunk_id in enumerate(merged.chunk_ids))
            segments.append(merged)
            live.append(np.ones(len(merged), bool))
        return replace(self, segments=tuple(segments), live=tuple(live), location=location)

    def compacted(self) -> MemoryIndex:
        """One segment holding every live row (with a graph when large): what a base snapshot stores."""
        merged = _merge(list(zip(self.segments, self.live, strict=True)))
        if merged is None:
            return replace(self, segments=(), live=(), location={})
        return replace(MemoryIndex.from_segment(merged, self.seq), dimension=self.dimension, analyzer=self.analyzer)

    def doc_ids(self) -> set[str]:
        return {
            doc_id
            for segment, live in zip(self.segments, self.live, strict=True)
            for doc_id in pc.unique(segment.table.column("doc_id").filter(pa.array(live))).to_pylist()
        }

    def row_table(self, fields: Sequence[str]) -> pa.Table:
        """These fields of every live row (any of ROW_FIELDS), over all segments."""
        parts = [
            segment.table.select(list(fields)).filter(pa.array(live))
            for segment, live in zip(self.segments, self.live, strict=True)
        ]
        return pa.concat_tables(parts) if parts else row_schema(fields).empty_table()

    def matching_rows(self, search_filter: SearchFilter) -> list[dict]:
        """The returned fields (OUTPUT_FIELDS) of every live row the filter allows, in no particular order."""
        parts = [
            segment.table.select(OUTPUT_FIELDS).filter(pa.array(segment.allowed(live, search_filter)))
            for segment, live in zip(self.segments, self.live, strict=True)
        ]
        return [row for part in parts for row in part.to_pylist()]

    # ---- search
    def search_dense(self, vector: Sequence[float], limit: int, search_filter: SearchFilter) -> list[Hit]:
        query = np.asarray(vector, dtype=np.float32)
        found = []
        for index, segment in enumerate(self.segments):
            rows, scores = segment.dense(query, limit, self._allowed(index, search_filter))
            found.extend((float(score), index, int(row)) for row, score in zip(rows, scores, strict=True))
        return self._hits(found, limit)

    def search_bm25(self, query: str, limit: int, search_filter: SearchFilter) -> list[Hit]:
        terms = term_counts(analyzed(query, self.analyzer))
        # A tenant's query is scored with its own corpus' statistics: relevance that does not depend on
        # (or reveal) what other tenants hold. A search of the document entries, with the entries' own.
        by_tenant = self.entry_statistics if search_filter.rows == "documents" else self.statistics
        statistics = by_tenant.get(search_filter.tenant) or EMPTY_STATISTICS
        found = []
        for index, segment in enumerate(self.segments):
            allowed = self._allowed(index, search_filter)
            parts = self.impacts[index]
            if "all" in parts:  # a segment without document entries: none to read when only they are asked for
                selected = [] if search_filter.rows == "documents" else [parts["all"]]
            else:
                kinds = ("chunks", "documents") if search_filter.rows == "all" else (search_filter.rows,)
                selected = [parts[kind] for kind in kinds]
            for part in selected:
                part_allowed = allowed if part.rows is None else allowed[part.rows]
                rows, scores = segment.bm25(terms, statistics, part.impacts, limit, part_allowed)
                rows = rows if part.rows is None else part.rows[rows]
                found.extend((float(score), index, int(row)) for row, score in zip(rows, scores, strict=True))
        return self._hits(found, limit)

    def _allowed(self, index: int, search_filter: SearchFilter) -> np.ndarray:
        """The segment's rows the filter allows, minus its disabled chunks (found by id: O(disabled))."""
        allowed = self.segments[index].allowed(self.live[index], search_filter)
        located = (self.location.get(chunk_id) for chunk_id in search_filter.excluded)
        disabled = [where[1] for where in located if where is not None and where[0] == index]
        if not disabled:
            return allowed
        allowed = allowed.copy()  # without a filter `allowed` is the live mask itself, shared by every reader
        allowed[disabled] = False
        return allowed

    def _hits(self, found: list[tuple[float, int, int]], limit: int) -> list[Hit]:
        # Equal scores by chunk id: the same rows in another layout (segments, merges) give the same order.
        found.sort(key=lambda item: (-item[0], self.segments[item[1]].chunk_ids[item[2]]))
        return [
            Hit(self.segments[index].chunk_ids[row], score, RowFields(self.segments[index], row))
            for score, index, row in found[:limit]
        ]


class RowFields(Mapping):
    """A hit's fields, read from its segment only when asked: fusion ranks 2 × 100 candidates by id and
    score, and only the final top k are ever read. `position` (the head bonus reads it for every dense
    candidate) comes from the segment's column without reading the row."""

    __slots__ = ("_row", "_segment", "_values")

    def __init__(self, segment: Segment, row: int) -> None:
        self._segment, self._row, self._values = segment, row, None

    def _fields(self) -> dict:
        if self._values is None:
            self._values = self._segment.table.slice(self._row, 1).select(OUTPUT_FIELDS).to_pylist()[0]
        return self._values

    def __getitem__(self, name: str):
        if name == "position" and self._values is None:
            return int(self._segment.positions[self._row])
        return self._fields()[name]

    def __iter__(self):
        return iter(self._fields())

    def __len__(self) -> int:
        return len(OUTPUT_FIELDS)


def _merge(parts: list[tuple[Segment, np.ndarray]]) -> Segment | None:
    """One segment of the live rows of these, reusing their term counts (no re-tokenizing)."""
    parts = [(segment, np.flatnonzero(live)) for segment, live in parts if live.any()]
    if not parts:
        return None
    if len(parts) == 1 and len(parts[0][1]) == len(parts[0][0]):
        segment = parts[0][0]  # one segment, every row live: it is its own merge (graph included)
        return segment if segment.graph is not None or len(segment) < GRAPH_MIN_ROWS else segment.with_graph()
    vocabulary: dict[str, int] = {}
    blocks = []
    for segment, rows in parts:
        remap = np.empty(len(segment.vocabulary), np.int32)
        for term, column in segment.vocabulary.items():
            remap[column] = vocabulary.setdefault(term, len(vocabulary))
        block = segment.postings[rows].tocoo()
        blocks.append((block.row, remap[block.col], block.data, len(rows)))
    offsets = np.cumsum([0] + [count for *_, count in blocks])
    postings = sp.csc_matrix(
        (
            np.concatenate([data for _, _, data, _ in blocks]),
            (
                np.concatenate([row + offset for (row, _, _, _), offset in zip(blocks, offsets, strict=False)]),
                np.concatenate([col for _, col, _, _ in blocks]),
            ),
        ),
        shape=(int(offsets[-1]), len(vocabulary)),
    )
    table = pa.concat_tables(
        [segment.table if len(rows) == len(segment) else segment.table.take(pa.array(rows)) for segment, rows in parts]
    )
    vectors = np.vstack([segment.vectors[rows] for segment, rows in parts])
    lengths = np.concatenate([segment.lengths[rows] for segment, rows in parts])
    merged = Segment(table, np.ascontiguousarray(vectors), vocabulary, postings, lengths).entries_last()
    return merged.with_graph() if len(merged) >= GRAPH_MIN_ROWS else merged
