"""Blue/green index builds. Each collection is one build (embedding model + chunking); the serving alias
points at the promoted one. A candidate build is written to a new collection while the old one keeps
serving; its evaluation gates the alias move; the previous collection stays for a one-command rollback.

What a collection is and did is recorded in its own properties, so every process (indexing runs, serving
replicas, the CLI) sees the same history without another database.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from rag_core.chunking import ChunkingConfig
from rag_core.embedding import Embedder, backend_of
from rag_core.store import IndexBuild, MilvusStore

STATUS = "rag.status"
CANDIDATE, PROMOTED, REJECTED, RETIRED, ROLLED_BACK = "candidate", "promoted", "rejected", "retired", "rolled_back"
EVAL_NDCG = "rag.eval.ndcg_at_10"
PROMOTED_FROM = "rag.promoted_from"


@dataclass(frozen=True)
class BuildSpec:
    """What to build with: a model reference (rag_core.models), the chunk sizes and the embedding backend."""

    model: str
    chunk_max_tokens: int
    chunk_overlap_tokens: int
    backend: str = "torch"


def index_build(embedder: Embedder, chunking: ChunkingConfig) -> IndexBuild:
    return IndexBuild(
        embedding_model=embedder.version.split("@")[0],
        embedding_version=embedder.version,
        dimension=embedder.dimension,
        chunking=chunking.describe(),
        model_reference=embedder.reference,
        chunk_max_tokens=chunking.max_tokens,
        chunk_overlap_tokens=chunking.overlap_tokens,
    )


def spec_of(properties: dict[str, str], default_model: str) -> BuildSpec:
    """The spec a collection was built with (collections from before these properties: the base model).
    The backend is the one its embedding version names (`…@hash+onnx-int8`; a bare `…@hash` is torch)."""
    return BuildSpec(
        properties.get("rag.embedding_model_uri") or default_model,
        int(properties.get("rag.chunk_max_tokens") or 256),
        int(properties.get("rag.chunk_overlap_tokens") or 32),
        backend_of(properties.get("rag.embedding_version", "")),
    )


def served_spec(store: MilvusStore, default_model: str) -> BuildSpec | None:
    served = store.alias_target()
    return spec_of(store.collection_properties(served), default_model) if served else None


@dataclass(frozen=True)
class GateDecision:
    passed: bool
    candidate_ndcg: float
    baseline_ndcg: float | None
    margin: float
    reason: str


def gate(candidate_ndcg: float, baseline_ndcg: float | None, margin: float) -> GateDecision:
    """A build may not fall more than `margin` (absolute nDCG@10) below the promoted index."""
    if baseline_ndcg is None:
        return GateDecision(True, candidate_ndcg, None, margin, "no promoted index to compare with")
    floor = baseline_ndcg - margin
    if candidate_ndcg + 1e-9 >= floor:
        return GateDecision(
            True, candidate_ndcg, baseline_ndcg, margin,
            f"nDCG@10 {candidate_ndcg:.4f} ≥ promoted {baseline_ndcg:.4f} − margin {margin:.4f}",
        )
    return GateDecision(
        False, candidate_ndcg, baseline_ndcg, margin,
        f"nDCG@10 {candidate_ndcg:.4f} is more than {margin:.4f} below the promoted index's {baseline_ndcg:.4f}",
    )


def recorded_ndcg(store: MilvusStore, collection: str) -> float | None:
    value = store.collection_properties(collection).get(EVAL_NDCG)
    return float(value) if value else None


def promote(store: MilvusStore, collection: str, ndcg: float | None) -> str | None:
    """Move the alias to `collection` atomically; returns the collection it served before."""
    previous = store.alias_target()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    if previous == collection:
        if ndcg is not None:
            store.set_properties(collection, {EVAL_NDCG: f"{ndcg:.6f}"})
        return previous
    properties = {STATUS: PROMOTED, "rag.promoted_at": stamp}
    if previous:
        properties[PROMOTED_FROM] = previous
    if ndcg is not None:
        properties[EVAL_NDCG] = f"{ndcg:.6f}"
    store.set_properties(collection, properties)
    store.point_alias(collection)
    if previous:
        store.set_properties(previous, {STATUS: RETIRED, "rag.retired_at": stamp})
    return previous


def reject(store: MilvusStore, collection: str, reason: str) -> None:
    store.set_properties(collection, {STATUS: REJECTED, "rag.rejected_reason": reason[:500]})


def rollback(store: MilvusStore) -> tuple[str, str]:
    """Serve the build that was promoted before the current one. Returns (from, to)."""
    current = store.alias_target()
    if current is None:
        raise RuntimeError(f"the alias {store.alias} does not exist — nothing to roll back")
    previous = store.collection_properties(current).get(PROMOTED_FROM)
    if not previous:
        raise RuntimeError(f"{current} records no previous build (rag.promoted_from) — nothing to roll back to")
    if not store.has_collection(previous):
        raise RuntimeError(f"the previous build {previous} was dropped — rollback needs it; rebuild it instead")
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    store.point_alias(previous)
    store.set_properties(previous, {STATUS: PROMOTED, "rag.promoted_at": stamp})
    store.set_properties(current, {STATUS: ROLLED_BACK, "rag.rolled_back_at": stamp})
    return current, previous


def builds(store: MilvusStore) -> list[dict[str, str]]:
    """Every build under the alias' prefix with its status, newest promotion first."""
    served = store.alias_target()
    rows = []
    for name in store.list_collections():
        properties = store.collection_properties(name)
        rows.append(
            {
                "collection": name,
                "served": str(name == served),
                "status": properties.get(STATUS, PROMOTED if name == served else CANDIDATE),
                "model": properties.get("rag.embedding_version", ""),
                "chunking": properties.get("rag.chunking", ""),
                "ndcg_at_10": properties.get(EVAL_NDCG, ""),
                "promoted_at": properties.get("rag.promoted_at", ""),
            }
        )
    rows.sort(key=lambda row: row["promoted_at"], reverse=True)
    return sorted(rows, key=lambda row: row["served"] != "True")  # stable: the newest promotion stays first
