"""The indexing assets. Each is a thin step over rag_core that returns MaterializeResult metadata, so
the Dagster UI tells the story of a build: counts, tokens, seconds, model version, quarantined files.

All four are partitioned by source file and use a single-run backfill policy: a build over thousands
of partitions is one run, and the embedding step sees every chunk of the run in one batched encode.
"""

import time
from collections import Counter

import numpy as np
from dagster import AssetExecutionContext, BackfillPolicy, MaterializeResult, MetadataValue, asset

from rag_assets.partitions import documents_partitions
from rag_assets.resources import CatalogResource, EmbedderResource, MilvusResource, SourcesResource
from rag_core.catalog import INDEXED, QUARANTINED, CatalogEntry
from rag_core.chunking import Chunk, chunk_documents
from rag_core.documents import ParsedSource
from rag_core.embedding import embed_with_cache
from rag_core.indexing import SyncStats, milvus_rows, missing_source, parse_units, sync_partitions
from rag_core.promotion import CANDIDATE, STATUS, index_build, promote

INDEX_WRITER_TAG = {"rag/index-writer": "milvus"}
PARTITIONED = dict(
    partitions_def=documents_partitions,
    backfill_policy=BackfillPolicy.single_run(),
    io_manager_key="staging_io_manager",
    group_name="indexing",
)


def _seconds(started: float) -> MetadataValue:
    return MetadataValue.float(round(time.perf_counter() - started, 3))


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
    redactions: Counter[str] = Counter()
    for source in parsed.values():
        for document in source.documents:
            redactions.update(document.redactions)
    parsers = Counter(document.parser for source in parsed.values() for document in source.documents)
    return MaterializeResult(
        value=parsed,
        metadata={
            "partitions": len(parsed),
            "documents": sum(len(source.documents) for source in parsed.values()),
            "characters": sum(len(d.text) for source in parsed.values() for d in source.documents),
            "quarantined": len(quarantined),
            "quarantine_reasons": MetadataValue.md("\n".join(f"- {item.describe()}" for item in quarantined) or "none"),
            "parsers": MetadataValue.json(dict(parsers)),
            "pii_redactions": MetadataValue.json(dict(redactions)),
            "redact_pii": sources.redact_pii,
            "seconds": _seconds(started),
        },
    )


@asset(**PARTITIONED, kinds={"python"})
def document_chunks(
    context: AssetExecutionContext, raw_documents: dict[str, ParsedSource], embedder: EmbedderResource
) -> MaterializeResult:
    """Token-aware chunks (measured with the embedder's tokenizer) with overlap and character offsets."""
    started = time.perf_counter()
    config = embedder.chunking()
    documents = [document for source in raw_documents.values() for document in source.documents]
    by_partition: dict[str, list[Chunk]] = {key: [] for key in raw_documents}
    for chunk in chunk_documents(documents, embedder.get().tokenizer, config):
        by_partition[chunk.partition_key].append(chunk)
    chunks = [chunk for partition in by_partition.values() for chunk in partition]
    tokens = [chunk.token_count for chunk in chunks]
    return MaterializeResult(
        value=by_partition,
        metadata={
            "chunks": len(chunks),
            "documents": len(documents),
            "tokens": sum(tokens),
            "max_chunk_tokens": max(tokens, default=0),
            "chunking": config.describe(),
            "seconds": _seconds(started),
        },
    )


@asset(**PARTITIONED, kinds={"pytorch"})
def chunk_embeddings(
    context: AssetExecutionContext, document_chunks: dict[str, list[Chunk]], embedder: EmbedderResource
) -> MaterializeResult:
    """One normalised vector per chunk, from one batched encode over every uncached chunk of the run."""
    chunks = [chunk for partition in document_chunks.values() for chunk in partition]
    model = embedder.get()
    vectors, stats = embed_with_cache(
        model,
        embedder.cache(),
        [chunk.search_text for chunk in chunks],
        [chunk.content_hash for chunk in chunks],
        show_progress=True,
    )
    by_partition, offset = {}, 0
    for key, partition in document_chunks.items():
        by_partition[key] = vectors[offset : offset + len(partition)]
        offset += len(partition)
    context.log.info(f"embedded {stats.computed} chunks, {stats.cached} from the cache, in {stats.seconds:.1f} s")
    return MaterializeResult(
        value=by_partition,
        metadata={
            "vectors": stats.total,
            "computed": stats.computed,
            "from_cache": stats.cached,
            "model_version": model.version,
            "dimension": int(vectors.shape[1]) if len(vectors) else model.dimension,
            "chunks_per_second": round(stats.computed / stats.seconds, 1) if stats.computed else 0.0,
            "seconds": round(stats.seconds, 3),
        },
    )


def _catalog_entry(source: ParsedSource, chunks: int, collection: str, model_version: str) -> CatalogEntry:
    return CatalogEntry(
        partition_key=source.unit.partition_key,
        source=source.unit.relative_path,
        tenant=source.unit.tenant,
        content_hash=source.unit.content_hash,
        status=INDEXED if source.documents else QUARANTINED,
        documents=len(source.documents),
        chunks=chunks,
        quarantined=[item.describe() for item in source.quarantined],
        collection=collection,
        embedding_version=model_version,
    )


@asset(**PARTITIONED, kinds={"milvus"}, op_tags=INDEX_WRITER_TAG)
def milvus_collection(
    context: AssetExecutionContext,
    raw_documents: dict[str, ParsedSource],
    document_chunks: dict[str, list[Chunk]],
    chunk_embeddings: dict[str, np.ndarray],
    embedder: EmbedderResource,
    milvus: MilvusResource,
    catalog: CatalogResource,
) -> MaterializeResult:
    """The Milvus collection: dense vectors (HNSW, cosine), a BM25 sparse field computed by a Milvus
    Function over the text, a tenant partition key, published under the serving alias."""
    started = time.perf_counter()
    model = embedder.get()
    build = index_build(model, embedder.chunking())
    indexable = {key: source for key, source in raw_documents.items() if source.documents}
    kept = sorted(set(raw_documents) - set(indexable))
    for key in kept:
        context.log.warning(f"{key}: nothing parsed; its previously indexed chunks (if any) are kept")
    stats = SyncStats()
    with milvus.store() as store:
        collection = store.ensure_collection(build)
        rows = {}
        for key, source in indexable.items():
            extra = {
                d.doc_id: {
                    "parser": d.parser,
                    "modified_at": d.modified_at,
                    "doc_hash": d.content_hash,
                    "redactions": d.redactions,
                }
                for d in source.documents
            }
            rows[key] = milvus_rows(document_chunks[key], chunk_embeddings[key], extra)
        stats.add(sync_partitions(store, collection, rows))
        if stats.inserted or stats.deleted:  # a one-pass build's recorded size no longer holds
            store.set_properties(collection, {"rag.expected_rows": ""})
        served = store.alias_target()
        if served is None:  # the first build has nothing to be compared with: publish it
            promote(store, collection, ndcg=None)
        elif served != collection:
            store.set_properties(collection, {STATUS: CANDIDATE})
            context.log.warning(
                f"alias {store.alias} keeps serving {served}; {collection} (model {model.version}, "
                f"{build.chunking}) is a candidate build — `rag promote` evaluates it and moves the alias "
                "only if it passes the quality gate"
            )
        total_rows = store.count(collection)
        alias_after = store.alias_target()
    catalog.get().record(
        _catalog_entry(source, len(document_chunks.get(key, [])), collection, model.version)
        for key, source in raw_documents.items()
        if source.unit.content_hash != "missing"
    )
    return MaterializeResult(
        metadata={
            "collection": collection,
            "alias": f"{milvus.alias} → {alias_after}",
            "embedding_model": model.version,
            "rows_inserted": stats.inserted,
            "rows_deleted": stats.deleted,
            "rows_unchanged": stats.unchanged,
            "partition_rows": sum(len(r) for r in rows.values()),
            "collection_rows": total_rows,
            "kept_quarantined_partitions": len(kept),
            "milvus_uri": milvus.uri,
            "seconds": _seconds(started),
        },
    )


INDEX_ASSETS = [raw_documents, document_chunks, chunk_embeddings, milvus_collection]
