"""The in-memory search index of the served build, as an asset: the snapshot that serving processes and
evaluation steps load (faiss HNSW graph, BM25 term matrix, the rows), compacted from the search log."""

import time

from dagster import AssetExecutionContext, AutomationCondition, MaterializeResult, MetadataValue, asset

from rag_assets.assets.indexing import milvus_collection
from rag_assets.resources import MilvusResource


@asset(
    group_name="indexing",
    deps=[milvus_collection],
    kinds={"python"},
    automation_condition=AutomationCondition.eager(),
)
def search_index(context: AssetExecutionContext, milvus: MilvusResource) -> MaterializeResult:
    """Snapshot of the served build for the in-memory engine (Milvus Lite); with a Milvus server or
    cluster the API searches Milvus itself and there is nothing to build."""
    connection = milvus.connection()
    if connection.engine != "memory":
        return MaterializeResult(metadata={"engine": connection.engine, "snapshot": "none: searches run in Milvus"})
    started = time.perf_counter()
    engine = connection.memory_engine()
    served = engine.served()
    folder = engine.log.save_base(served.collection, served.searcher)
    size = sum(path.stat().st_size for path in folder.iterdir())
    snapshot = engine.log.describe_base(folder)
    context.log.info(f"{served.collection}: {served.rows} rows snapshotted at change {served.searcher.seq}")
    return MaterializeResult(
        metadata={
            "engine": "memory",
            "collection": served.collection,
            "version": served.version,
            "rows": served.rows,
            "bytes_on_disk": size,
            "hnsw_graph": snapshot.get("graph", False),
            "bm25_terms": snapshot.get("terms", 0),
            "snapshot": MetadataValue.path(str(folder)),
            "seconds": round(time.perf_counter() - started, 3),
        }
    )
