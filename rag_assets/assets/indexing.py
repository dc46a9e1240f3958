"""The indexing assets. Each is a thin step over rag_core that returns MaterializeResult metadata, so
the Dagster UI tells the story of a build: counts, tokens, seconds, model version, quarantined files.

All four are partitioned by source file and use a single-run backfill policy: a build over thousands
of partitions is one run, and the embedding step sees every chunk of the run in one batched encode. Each
partition's materialization still tells its own story: its counts are recorded on its own event
(`context.add_asset_metadata(..., partition_key=...)`), and the run's totals ride beside them as `run_*`.

The build a run writes (model, embedding version, backend, chunk sizes, target collection) is decided once,
where the run is requested (the documents sensor, `rag index`), and travels with the run as its
`rag/build` tag; every step reads it from there, and the vectors carry the version they were embedded with.
"""

import time
from collections import Counter
from collections.abc import Mapping

from dagster import (
    AssetExecutionContext,
    BackfillPolicy,
    Failure,
    MaterializeResult,
    MetadataValue,
    TableColumn,
    TableRecord,
    TableSchema,
    asset,
)

from rag_assets.partitions import documents_partitions
from rag_assets.resources import CatalogResource, EmbedderResource, MilvusResource, SourcesResource
from rag_core.catalog import INDEXED, QUARANTINED, CatalogEntry
from rag_core.chunking import Chunk, passages
from rag_core.documents import ParsedSource
from rag_core.embedding import Embedder, EmbeddingStats
from rag_core.indexing import (
    PartitionVectors,
    SyncStats,
    chunk_sources,
    embed_chunks,
    foreign_vectors,
    missing_source,
    parse_units,
    partition_rows,
)
from rag_core.promotion import BuildSpec, index_build, sync_build
from rag_core.store import MilvusStore

INDEX_WRITER_TAG = {"rag/index-writer": "milvus"}
BUILD_TAG = "rag/build"
PARTITIONED = dict(
    partitions_def=documents_partitions,
    backfill_policy=BackfillPolicy.single_run(),
    io_manager_key="staging_io_manager",
    group_name="indexing",
)


# Dagster checks each partition-scoped metadata call against the run's partition range, reading every
# partition key from the instance: a run over N partitions costs N such reads per asset. Past this many, the
# events carry only the run's `run_*` totals (clearly named as such), and the run log says so.
PER_PARTITION_METADATA_LIMIT = 500
PREVIEW_CHUNKS = 5  # sample chunks shown per partition in document_chunks' metadata
PREVIEW_CHARS = 200
PREVIEW_SCHEMA = TableSchema(
    columns=[
        TableColumn("position", "int"),
        TableColumn("doc_id", "string"),
        TableColumn("tokens", "int"),
        TableColumn("chars", "string", description="start–end offsets in the document's text"),
        TableColumn("text", "string"),
    ]
)


def _seconds(started: float) -> MetadataValue:
    return MetadataValue.float(round(time.perf_counter() - started, 3))


def _per_partition(context: AssetExecutionContext, metadata: Mapping[str, Mapping[str, object]]) -> None:
    """Records each partition's own metadata on its own materialization event. A run over many partitions
    materializes each of them; without this every event would carry the run's totals."""
    if len(context.partition_keys) > PER_PARTITION_METADATA_LIMIT:
        context.log.info(
            f"{len(context.partition_keys)} partitions in this run (over {PER_PARTITION_METADATA_LIMIT}): their "
            "events carry the run's run_* totals only"
        )
        return
    for key in context.partition_keys:
        if key in metadata:
            context.add_asset_metadata(dict(metadata[key]), partition_key=key)


def _source_metadata(source: ParsedSource) -> dict[str, object]:
    """What one source partition parsed to."""
    redactions: Counter[str] = Counter()
    for document in source.documents:
        redactions.update(document.redactions)
    return {
        "source": source.unit.relative_path,
        "tenant": source.unit.tenant,
        "documents": len(source.documents),
        "characters": sum(len(document.text) for document in source.documents),
        "quarantined": len(source.quarantined),
        "quarantine_reasons": MetadataValue.md(
            "\n".join(f"- {item.describe()}" for item in source.quarantined) or "none"
        ),
        "parsers": MetadataValue.json(dict(Counter(document.parser for document in source.documents))),
        "pii_redactions": MetadataValue.json(dict(redactions)),
    }


def _chunk_preview(chunks: list[Chunk]) -> MetadataValue:
    """The partition's first chunks as a table: what the embedder will read, and where it came from."""
    return MetadataValue.table(
        records=[
            TableRecord(
                {
                    "position": chunk.position,
                    "doc_id": chunk.doc_id,
                    "tokens": chunk.token_count,
                    "chars": f"{chunk.start_char}–{chunk.end_char}",
                    "text": chunk.text[:PREVIEW_CHARS] + ("…" if len(chunk.text) > PREVIEW_CHARS else ""),
                }
            )
            for chunk in chunks[:PREVIEW_CHUNKS]
        ],
        schema=PREVIEW_SCHEMA,
    )


def _chunks_metadata(rows: list[Chunk], documents: int) -> dict[str, object]:
    chunks = passages(rows)
    tokens = [chunk.token_count for chunk in chunks]
    return {
        "chunks": len(chunks),
        "document_entries": len(rows) - len(chunks),
        "documents": documents,
        "tokens": sum(tokens),
        "max_chunk_tokens": max(tokens, default=0),
        "preview": _chunk_preview(chunks),
    }


def _vectors_metadata(rows: list[Chunk], vectors: PartitionVectors, stats: EmbeddingStats) -> dict[str, object]:
    """Vectors per row; encoded or cached per chunk (a document entry reuses its first chunk's vector)."""
    chunks = passages(rows)
    computed = sum(chunk.content_hash in stats.computed_hashes for chunk in chunks)
    return {"vectors": len(vectors.vectors), "computed": computed, "from_cache": len(chunks) - computed}


def build_tags(spec: BuildSpec) -> dict[str, str]:
    """The run tags that carry a build to every step of an indexing run."""
    return {BUILD_TAG: spec.to_json()}


def run_build(context: AssetExecutionContext, embedder: EmbedderResource) -> BuildSpec:
    """The build this run writes, as the run carries it. A run launched without one (Materialize in the
    UI, `dagster asset materialize`) has it decided by the first step that needs it, which records it on
    the run so that every later step reads the same."""
    run = context.instance.get_run_by_id(context.run_id)
    carried = run.tags.get(BUILD_TAG) if run else None
    if carried:
        return BuildSpec.from_json(carried)
    spec = embedder.decide_build()
    context.instance.add_run_tags(context.run_id, build_tags(spec))
    context.log.info(f"the run carried no {BUILD_TAG} tag; it now writes {spec.describe()}")
    return spec


def _model(spec: BuildSpec, embedder: EmbedderResource) -> Embedder:
    model = embedder.load(spec.model, spec.backend)
    if model.version != spec.embedding_version:
        raise Failure(
            f"{spec.model} now loads as {model.version}, not {spec.embedding_version} as when this run was "
            "requested (its weights changed) — launch a new run (`rag index`, or the sensor's next tick)"
        )
    return model


@asset(**PARTITIONED, kinds={"python"})
def raw_documents(context: AssetExecutionContext, sources: SourcesResource) -> MaterializeResult:
    """Parsed, normalised text and metadata (source, title, modified time, content hash, parser) for
    each source partition; bad files are quarantined with the reason instead of failing the run."""
    started = time.perf_counter()
    units, missing = sources.units_for(context.partition_keys)
    parsed = {
        source.unit.partition_key: source
        for source in parse_units(units.values(), sources.limits(), sources.redact_pii)
    }
    parsed.update({key: missing_source(key) for key in missing})
    quarantined = [item for source in parsed.values() for item in source.quarantined]
    for item in quarantined:
        context.log.warning(f"quarantined {item.describe()}")
    _per_partition(context, {key: _source_metadata(source) for key, source in parsed.items()})
    return MaterializeResult(
        value=parsed,
        metadata={
            "run_partitions": len(parsed),
            "run_documents": sum(len(source.documents) for source in parsed.values()),
            "run_characters": sum(len(d.text) for source in parsed.values() for d in source.documents),
            "run_quarantined": len(quarantined),
            "redact_pii": sources.redact_pii,
            "seconds": _seconds(started),
        },
    )


@asset(**PARTITIONED, kinds={"python"})
def document_chunks(
    context: AssetExecutionContext, raw_documents: dict[str, ParsedSource], embedder: EmbedderResource
) -> MaterializeResult:
    """Token-aware chunks (measured with the build's tokenizer) with overlap and character offsets."""
    started = time.perf_counter()
    spec = run_build(context, embedder)
    model = _model(spec, embedder)
    config = spec.chunking(model.max_seq_length - 2)
    by_partition = chunk_sources(raw_documents.values(), model.tokenizer, config)
    _per_partition(
        context,
        {key: _chunks_metadata(chunks, len(raw_documents[key].documents)) for key, chunks in by_partition.items()},
    )
    rows = [chunk for partition in by_partition.values() for chunk in partition]
    tokens = [chunk.token_count for chunk in passages(rows)]
    return MaterializeResult(
        value=by_partition,
        metadata={
            "run_chunks": len(tokens),
            "run_document_entries": len(rows) - len(tokens),
            "run_documents": sum(len(source.documents) for source in raw_documents.values()),
            "run_tokens": sum(tokens),
            "run_max_chunk_tokens": max(tokens, default=0),
            "chunking": config.describe(),
            "build": spec.describe(),
            "seconds": _seconds(started),
        },
    )


@asset(**PARTITIONED, kinds={"pytorch"})
def chunk_embeddings(
    context: AssetExecutionContext, document_chunks: dict[str, list[Chunk]], embedder: EmbedderResource
) -> MaterializeResult:
    """One normalised vector per chunk, from one batched encode over every uncached chunk of the run; each
    partition's vectors carry the embedding version that made them."""
    spec = run_build(context, embedder)
    model = _model(spec, embedder)
    by_partition, stats = embed_chunks(model, embedder.cache(), document_chunks, show_progress=True)
    context.log.info(f"embedded {stats.computed} chunks, {stats.cached} from the cache, in {stats.seconds:.1f} s")
    widths = {int(partition.vectors.shape[1]) for partition in by_partition.values() if len(partition.vectors)}
    _per_partition(
        context,
        {key: _vectors_metadata(document_chunks[key], vectors, stats) for key, vectors in by_partition.items()},
    )
    return MaterializeResult(
        value=by_partition,
        metadata={
            "run_vectors": stats.total,
            "run_computed": stats.computed,
            "run_from_cache": stats.cached,
            "model_version": model.version,
            "dimension": widths.pop() if widths else model.dimension,
            "chunks_per_second": round(stats.computed / stats.seconds, 1) if stats.computed else 0.0,
            "seconds": round(stats.seconds, 3),
        },
    )


def _catalog_entries(
    sources: dict[str, ParsedSource], chunks: dict[str, list[Chunk]], spec: BuildSpec
) -> list[CatalogEntry]:
    """What the catalog records of each source partition the run wrote (a vanished file: nothing)."""
    return [
        CatalogEntry(
            partition_key=source.unit.partition_key,
            source=source.unit.relative_path,
            tenant=source.unit.tenant,
            content_hash=source.unit.content_hash,
            status=INDEXED if source.documents else QUARANTINED,
            documents=len(source.documents),
            chunks=len(passages(chunks.get(key, []))),
            quarantined=[item.describe() for item in source.quarantined],
            collection=spec.collection,
            embedding_version=spec.embedding_version,
        )
        for key, source in sources.items()
        if source.unit.content_hash != "missing"
    ]


def _refuse_mixed_write(
    spec: BuildSpec, vectors: dict[str, PartitionVectors], served: str | None, built_with: str
) -> None:
    """Nothing is written unless the vectors, the target collection and the alias all agree with the build
    the run was requested for."""
    foreign = foreign_vectors(vectors, spec.embedding_version)
    if foreign:
        listed = ", ".join(f"{key} ({version})" for key, version in sorted(foreign.items())[:5])
        raise Failure(
            f"{len(foreign)} partitions hold vectors embedded with another model than this run's "
            f"{spec.embedding_version}: {listed} — nothing was written; materialize chunk_embeddings in the same "
            "run (select raw_documents → milvus_collection together, or `rag index`)"
        )
    if built_with and built_with != spec.embedding_version:
        raise Failure(
            f"{spec.collection} holds vectors of {built_with}, not this run's {spec.embedding_version} — nothing "
            "was written; launch a new run (`rag index`) so the build is decided again, or drop the collection"
        )
    if (served or "") != spec.served:
        raise Failure(
            f"the alias now serves {served or 'nothing'}, but this run was requested while it served "
            f"{spec.served or 'nothing'} ({spec.describe()}) — nothing was written; the documents sensor requests "
            "these files again for the build now served (or run `rag index`)"
        )


def _write_build(
    context: AssetExecutionContext,
    store: MilvusStore,
    spec: BuildSpec,
    embedder: EmbedderResource,
    vectors: dict[str, PartitionVectors],
    rows: dict[str, list[dict]],
) -> SyncStats:
    """Syncs the rows into the run's collection (created if need be, unless the write is refused): the first
    build is published; one beside another served build is a candidate."""
    collection, served = spec.collection, store.alias_target()
    built_with = store.record(collection).embedding_version if store.has_collection(collection) else ""
    _refuse_mixed_write(spec, vectors, served, built_with)
    if not built_with:
        model = _model(spec, embedder)
        store.ensure_collection(index_build(model, spec.chunking(model.max_seq_length - 2)), name=collection)
    stats = sync_build(store, collection, rows, served)
    if served not in (None, collection):
        context.log.warning(
            f"alias {store.alias} keeps serving {served}; {collection} ({spec.describe()}) is a candidate "
            "build — `rag promote` evaluates it and moves the alias only if it passes the quality gate"
        )
    return stats


def _rows_metadata(
    rows: list[dict], stats: SyncStats, key: str, disabled: Mapping[str, set[str] | frozenset[str]]
) -> dict[str, object]:
    """One partition's write: a partition that parsed to nothing has no rows here and keeps its old ones."""
    own = stats.partitions.get(key, SyncStats())
    return {
        "rows_inserted": own.inserted,
        "rows_deleted": own.deleted,
        "rows_unchanged": own.unchanged,
        "partition_rows": len(rows),
        "kept_previous_rows": not rows,
        "disabled_chunks": sum(row["chunk_id"] in disabled.get(row["tenant"], ()) for row in rows),
    }


@asset(**PARTITIONED, kinds={"milvus"}, op_tags=INDEX_WRITER_TAG)
def milvus_collection(
    context: AssetExecutionContext,
    raw_documents: dict[str, ParsedSource],
    document_chunks: dict[str, list[Chunk]],
    chunk_embeddings: dict[str, PartitionVectors],
    embedder: EmbedderResource,
    milvus: MilvusResource,
    catalog: CatalogResource,
) -> MaterializeResult:
    """The Milvus collection: dense vectors (HNSW, cosine), a BM25 sparse field computed by a Milvus
    Function over the text, a tenant partition key, published under the serving alias. Writes only the
    run's build, and only vectors embedded with its model."""
    started = time.perf_counter()
    spec = run_build(context, embedder)
    kept = sorted(key for key, source in raw_documents.items() if not source.documents)
    for key in kept:
        context.log.warning(f"{key}: nothing parsed; its previously indexed chunks (if any) are kept")
    rows = partition_rows(raw_documents, document_chunks, chunk_embeddings)
    with milvus.store() as store:
        stats = _write_build(context, store, spec, embedder, chunk_embeddings, rows)
        total_rows, alias_after = store.count(spec.collection), store.alias_target()
    catalog.get().record(_catalog_entries(raw_documents, document_chunks, spec))
    disabled = catalog.get().disabled_chunks()
    _per_partition(context, {key: _rows_metadata(rows.get(key, []), stats, key, disabled) for key in raw_documents})
    return MaterializeResult(
        metadata={
            "collection": spec.collection,
            "alias": f"{milvus.alias} → {alias_after}",
            "embedding_model": spec.embedding_version,
            "run_rows_inserted": stats.inserted,
            "run_rows_deleted": stats.deleted,
            "run_rows_unchanged": stats.unchanged,
            "run_partition_rows": sum(len(r) for r in rows.values()),
            "collection_rows": total_rows,
            "run_kept_quarantined_partitions": len(kept),
            # Written, but excluded from retrieval: disabled in the console (rag_core.catalog.disabled_chunks).
            "disabled_chunks": sum(
                row["chunk_id"] in disabled.get(row["tenant"], ()) for partition in rows.values() for row in partition
            ),
            "milvus_uri": milvus.uri,
            "seconds": _seconds(started),
        },
    )


INDEX_ASSETS = [raw_documents, document_chunks, chunk_embeddings, milvus_collection]
