"""The one indexing pipeline: parse → chunk → embed → rows → sync. The partitioned Dagster assets run it a
step per asset; candidate builds, experiment grids and benchmarks run it in one pass (`build_from_sources`).

Sync makes a collection hold exactly a partition's rows: insert what is new, then delete what is gone — an
unchanged chunk has the same id and is left alone, so re-running changes nothing."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rag_core.chunking import Chunk, ChunkingConfig, chunk_documents, passages
from rag_core.documents import Document, ParsedSource, ParseLimits, Quarantined, SourceUnit, parse_source
from rag_core.embedding import Embedder, EmbeddingCache, EmbeddingStats, embed_with_cache
from rag_core.pii import redact
from rag_core.store import IndexBuild, MilvusStore


def parse_units(units: Iterable[SourceUnit], limits: ParseLimits, redact_pii: bool) -> list[ParsedSource]:
    parsed = [parse_source(unit, limits) for unit in units]
    if redact_pii:
        for source in parsed:
            for document in source.documents:
                document.text, document.redactions = redact(document.text)
                document.title, title_redactions = redact(document.title)
                for kind, count in title_redactions.items():
                    document.redactions[kind] = document.redactions.get(kind, 0) + count
    return parsed


def missing_source(key: str) -> ParsedSource:
    """A partition whose file vanished before its run: nothing to index, the sensor removes it."""
    unit = SourceUnit(key, path=Path(key), relative_path=key, tenant="", content_hash="missing")
    return ParsedSource(unit, [], [Quarantined(key, "the source file no longer exists")])


def chunk_sources(
    sources: Iterable[ParsedSource], tokenizer: Any, chunking: ChunkingConfig
) -> dict[str, list[Chunk]]:
    """Chunks per source partition (a partition that parsed to nothing has none)."""
    sources = list(sources)
    by_partition: dict[str, list[Chunk]] = {source.unit.partition_key: [] for source in sources}
    documents = [document for source in sources for document in source.documents]
    for chunk in chunk_documents(documents, tokenizer, chunking):
        by_partition[chunk.partition_key].append(chunk)
    return by_partition


@dataclass(frozen=True)
class PartitionVectors:
    """One partition's chunk vectors, with the embedding version that made them: a collection accepts
    only vectors of the version it was built with."""

    embedding_version: str
    vectors: np.ndarray


def embed_chunks(
    embedder: Embedder, cache: EmbeddingCache, chunks: Mapping[str, Sequence[Chunk]], show_progress: bool = False
) -> tuple[dict[str, PartitionVectors], EmbeddingStats]:
    """Vectors per partition, from one batched encode over every chunk the cache does not hold."""
    ordered = [chunk for partition in chunks.values() for chunk in partition]
    vectors, stats = embed_with_cache(
        embedder,
        cache,
        [chunk.embedded for chunk in ordered],
        [chunk.content_hash for chunk in ordered],
        show_progress=show_progress,
    )
    by_partition, offset = {}, 0
    for key, partition in chunks.items():
        by_partition[key] = PartitionVectors(embedder.version, vectors[offset : offset + len(partition)])
        offset += len(partition)
    return by_partition, stats


def foreign_vectors(vectors: Mapping[str, PartitionVectors], embedding_version: str) -> dict[str, str]:
    """{partition: its version} for the partitions whose vectors were not embedded with `embedding_version`."""
    return {
        key: partition.embedding_version
        for key, partition in vectors.items()
        if partition.embedding_version != embedding_version
    }


def row_metadata(document: Document) -> dict[str, Any]:
    """What every row records about its document, whichever build writes it."""
    return {
        "parser": document.parser,
        "modified_at": document.modified_at,
        "doc_hash": document.content_hash,
        "redactions": document.redactions,
    }


def milvus_rows(chunks: Sequence[Chunk], vectors: np.ndarray, documents: Mapping[str, Document]) -> list[dict]:
    return [
        {
            "chunk_id": chunk.chunk_id,
            "doc_id": chunk.doc_id,
            "source_key": chunk.partition_key,
            "tenant": chunk.tenant,
            "source": chunk.source,
            "title": chunk.title,
            "text": chunk.text,
            "search_text": chunk.search_text,
            "position": chunk.position,
            "start_char": chunk.start_char,
            "end_char": chunk.end_char,
            "dense": vector.tolist(),
            "metadata": {"token_count": chunk.token_count, **row_metadata(documents[chunk.doc_id])},
        }
        for chunk, vector in zip(chunks, vectors, strict=True)
    ]


def partition_rows(
    sources: Mapping[str, ParsedSource],
    chunks: Mapping[str, Sequence[Chunk]],
    vectors: Mapping[str, PartitionVectors],
) -> dict[str, list[dict]]:
    """Milvus rows per partition that parsed to documents; one that parsed to nothing keeps its old rows."""
    return {
        key: milvus_rows(chunks[key], vectors[key].vectors, {d.doc_id: d for d in source.documents})
        for key, source in sources.items()
        if source.documents
    }


@dataclass
class SyncStats:
    inserted: int = 0
    deleted: int = 0
    unchanged: int = 0
    partitions: dict[str, SyncStats] = field(default_factory=dict)  # each partition's own counts

    def add(self, other: SyncStats) -> None:
        self.inserted += other.inserted
        self.deleted += other.deleted
        self.unchanged += other.unchanged


def sync_partitions(
    store: MilvusStore,
    collection: str,
    rows_by_partition: dict[str, list[dict]],
) -> SyncStats:
    """Make the collection hold exactly these rows for these partitions."""
    stats = SyncStats()
    existing = store.chunk_ids_by_source(collection, sorted(rows_by_partition))
    to_insert: list[dict] = []
    to_delete: list[str] = []
    for key, rows in rows_by_partition.items():
        wanted = {row["chunk_id"] for row in rows}
        deleted = sorted(existing[key] - wanted)
        inserted = [row for row in rows if row["chunk_id"] not in existing[key]]
        to_delete.extend(deleted)
        to_insert.extend(inserted)
        stats.partitions[key] = SyncStats(len(inserted), len(deleted), len(wanted & existing[key]))
        stats.unchanged += stats.partitions[key].unchanged
    store.replace_rows(collection, to_insert, to_delete)
    stats.inserted, stats.deleted = len(to_insert), len(to_delete)
    if stats.inserted or stats.deleted:
        store.bump_index_version(collection)
    return stats


def remove_sources(store: MilvusStore, keys: Sequence[str]) -> int:
    """Delete every row of these source partitions from every collection of this alias (all builds)."""
    removed = 0
    for collection in store.list_collections():
        deleted = store.delete_sources(collection, list(keys))
        if deleted:
            store.bump_index_version(collection)
        removed += deleted
    return removed


@dataclass
class ReconcilePlan:
    """Drift between the source folder, the Dagster partitions, the catalog and Milvus."""

    add_partitions: list[str]
    delete_partitions: list[str]
    orphan_sources: list[str]  # rows in Milvus whose file is gone
    reindex: list[str]  # files whose rows in Milvus do not match the catalog
    forget: list[str]  # catalog entries whose file is gone
    requeue: list[str]  # files not indexed as they are now, with no run to do it: requested again

    @property
    def is_clean(self) -> bool:
        return not any(vars(self).values())

    def summary(self) -> dict[str, int]:
        return {name: len(keys) for name, keys in vars(self).items()}


def plan_reconcile(
    source_keys: set[str],
    partitions: set[str],
    catalog_chunks: dict[str, int | None],
    milvus_rows: dict[str, int],
    unindexed: set[str] | frozenset[str] = frozenset(),
) -> ReconcilePlan:
    """`catalog_chunks` maps each catalogued key to its chunk count, or None when it is quarantined;
    `unindexed` holds the keys whose file the catalog does not record as it is now and that no queued or
    running run covers. Those the sensor has seen (a partition exists) lost their run: requeue them."""
    expected_rows = {key: count for key, count in catalog_chunks.items() if count is not None}
    return ReconcilePlan(
        add_partitions=sorted(source_keys - partitions),
        delete_partitions=sorted(partitions - source_keys),
        orphan_sources=sorted(set(milvus_rows) - source_keys),
        reindex=sorted(
            key for key in source_keys & set(expected_rows) if milvus_rows.get(key, 0) != expected_rows[key]
        ),
        forget=sorted(set(catalog_chunks) - source_keys),
        requeue=sorted(unindexed & source_keys & partitions),
    )


@dataclass(frozen=True)
class RowCheck:
    """Whether a collection holds exactly the rows the pipeline produced for it."""

    passed: bool
    reason: str
    rows: int
    expected_rows: int
    mismatched_sources: list[str]
    sources_not_in_catalog: list[str]


def check_rows(
    rows_by_source: Mapping[str, int], catalog_chunks: Mapping[str, int], expected_rows: int | None
) -> RowCheck:
    """Rows per source in Milvus against the row count a one-pass build recorded (`expected_rows`), else
    against the chunk counts the catalog recorded per source for this collection. Nothing to compare with
    fails: a collection no build vouches for could hold anything."""
    total = sum(rows_by_source.values())
    if expected_rows is not None:
        if expected_rows == 0:
            return RowCheck(False, "the build recorded no rows: nothing was indexed", total, 0, [], [])
        reason = f"{total} rows; the build recorded {expected_rows}"
        return RowCheck(total == expected_rows, reason, total, expected_rows, [], [])
    orphans = sorted(set(rows_by_source) - set(catalog_chunks))
    if not catalog_chunks:
        reason = (
            f"the catalog records no indexed source for this collection ({total} rows in Milvus) — re-index it "
            "(`rag index`), or promote it with `rag promote` so the catalog tracks it"
        )
        return RowCheck(False, reason, total, 0, [], orphans)
    mismatched = sorted(key for key, chunks in catalog_chunks.items() if rows_by_source.get(key, 0) != chunks)
    expected = sum(catalog_chunks.values())
    passed = not mismatched and not orphans
    reason = (
        f"{total} rows match the catalog's {expected} chunks"
        if passed
        else f"{len(mismatched)} sources differ from the catalog, {len(orphans)} sources are not in it"
    )
    return RowCheck(passed, reason, total, expected, mismatched, orphans)


@dataclass
class BuildStats:
    documents: int
    quarantined: int
    chunks: int
    computed: int
    cached: int
    rows: int


def build_from_sources(
    store: MilvusStore,
    build: IndexBuild,
    units: Sequence[SourceUnit],
    embedder: Embedder,
    cache: EmbeddingCache,
    chunking: ChunkingConfig,
    limits: ParseLimits,
    redact_pii: bool,
    collection: str | None = None,
) -> tuple[str, BuildStats]:
    """A whole collection from the source folder in one pass (a candidate build, an experiment, a
    benchmark): the pipeline the partitioned assets run step by step, with one batched encode."""
    collection = store.ensure_collection(build, name=collection)
    parsed = {source.unit.partition_key: source for source in parse_units(units, limits, redact_pii)}
    chunks = chunk_sources(parsed.values(), embedder.tokenizer, chunking)
    vectors, stats = embed_chunks(embedder, cache, chunks)
    sync_partitions(store, collection, partition_rows(parsed, chunks, vectors))
    return collection, BuildStats(
        documents=sum(len(source.documents) for source in parsed.values()),
        quarantined=sum(len(source.quarantined) for source in parsed.values()),
        chunks=sum(len(passages(partition)) for partition in chunks.values()),
        computed=stats.computed,
        cached=stats.cached,
        rows=store.count(collection),
    )
