"""The indexing steps the Dagster assets are made of: parse, chunk, turn chunks into Milvus rows, and
synchronise one source partition's rows with the collection (insert what is new, then delete what is gone —
an unchanged chunk has the same id and is left alone, so re-running changes nothing)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rag_core.chunking import Chunk, ChunkingConfig, chunk_documents
from rag_core.documents import ParsedSource, ParseLimits, Quarantined, SourceUnit, parse_source
from rag_core.embedding import Embedder, EmbeddingCache, embed_with_cache
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


def milvus_rows(chunks: Sequence[Chunk], vectors: np.ndarray, extra: dict[str, dict]) -> list[dict]:
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
            "metadata": {"token_count": chunk.token_count, **extra.get(chunk.doc_id, {})},
        }
        for chunk, vector in zip(chunks, vectors, strict=True)
    ]


@dataclass
class SyncStats:
    inserted: int = 0
    deleted: int = 0
    unchanged: int = 0

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
        to_delete.extend(sorted(existing[key] - wanted))
        to_insert.extend(row for row in rows if row["chunk_id"] not in existing[key])
        stats.unchanged += len(wanted & existing[key])
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
) -> ReconcilePlan:
    """`catalog_chunks` maps each catalogued key to its chunk count, or None when it is quarantined."""
    expected_rows = {key: count for key, count in catalog_chunks.items() if count is not None}
    return ReconcilePlan(
        add_partitions=sorted(source_keys - partitions),
        delete_partitions=sorted(partitions - source_keys),
        orphan_sources=sorted(set(milvus_rows) - source_keys),
        reindex=sorted(
            key for key in source_keys & set(expected_rows) if milvus_rows.get(key, 0) != expected_rows[key]
        ),
        forget=sorted(set(catalog_chunks) - source_keys),
    )


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
    """A whole collection from the source folder in one pass (a candidate build or an experiment): the
    same parse → chunk → cached embed → rows as the partitioned assets, in one batched encode."""
    collection = store.ensure_collection(build, name=collection)
    parsed = parse_units(units, limits, redact_pii)
    documents = [document for source in parsed for document in source.documents]
    chunks = chunk_documents(documents, embedder.tokenizer, chunking)
    vectors, stats = embed_with_cache(
        embedder, cache, [chunk.search_text for chunk in chunks], [chunk.content_hash for chunk in chunks]
    )
    rows: dict[str, list[dict]] = {source.unit.partition_key: [] for source in parsed if source.documents}
    extra = {d.doc_id: {"parser": d.parser, "doc_hash": d.content_hash} for d in documents}
    for row in milvus_rows(chunks, vectors, extra):
        rows[row["source_key"]].append(row)
    sync_partitions(store, collection, rows)
    quarantined = sum(len(source.quarantined) for source in parsed)
    return collection, BuildStats(
        len(documents), quarantined, len(chunks), stats.computed, stats.cached, store.count(collection)
    )
