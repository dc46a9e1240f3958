"""Blue/green index builds. Each collection is one build (embedding model + chunking); the serving alias
points at the promoted one. A candidate build is written to a new collection while the old one keeps
serving; its evaluation gates the alias move; the previous collection stays for a one-command rollback.

What a collection is and did is recorded in its own properties, so every process (indexing runs, serving
replicas, the CLI) sees the same history without another database.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass

from rag_core.build_record import BuildRecord
from rag_core.chunking import ChunkingConfig
from rag_core.embedding import Embedder, backend_of
from rag_core.store import IndexBuild, MilvusStore

CANDIDATE, PROMOTED, REJECTED, RETIRED, ROLLED_BACK = "candidate", "promoted", "rejected", "retired", "rolled_back"


@dataclass(frozen=True)
class BuildSpec:
    """What a run builds with, decided once where the run is requested and carried with it: the model
    reference (rag_core.models) and the embedding version it loads as, the embedding backend, the chunk
    sizes, the collection the run writes, and the collection the alias served when it was decided."""

    model: str
    chunk_max_tokens: int
    chunk_overlap_tokens: int
    backend: str = "torch"
    embedding_version: str = ""
    collection: str = ""
    served: str = ""  # "" = nothing was served: the build is the first, and is published

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> BuildSpec:
        return cls(**json.loads(text))

    def chunking(self, model_limit: int) -> ChunkingConfig:
        """Chunks (with their title) fit `model_limit`: the model's sequence length less its special tokens."""
        return ChunkingConfig(self.chunk_max_tokens, self.chunk_overlap_tokens, model_limit)

    def describe(self) -> str:
        chunking = ChunkingConfig(self.chunk_max_tokens, self.chunk_overlap_tokens).describe()
        return f"{self.embedding_version or self.model}, {chunking} → {self.collection or 'no collection yet'}"


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


def spec_of(properties: dict[str, str], default_model: str, collection: str = "") -> BuildSpec:
    """The spec a collection was built with (collections from before these properties: the base model).
    The backend is the one its embedding version names (`…@hash+onnx-int8`; a bare `…@hash` is torch)."""
    record = BuildRecord.from_properties(properties)
    return BuildSpec(
        record.model_reference or default_model,
        256 if record.chunk_max_tokens is None else record.chunk_max_tokens,
        32 if record.chunk_overlap_tokens is None else record.chunk_overlap_tokens,
        backend_of(record.embedding_version),
        record.embedding_version,
        collection,
    )


def served_spec(store: MilvusStore, default_model: str) -> BuildSpec | None:
    served = store.alias_target()
    return spec_of(store.collection_properties(served), default_model, served) if served else None


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


def waiting_candidate(store: MilvusStore) -> str | None:
    """The newest collection built for promotion and not yet judged."""
    candidates = []
    for name in store.list_collections():
        record = store.record(name)
        if record.status == CANDIDATE:
            candidates.append((record.created_at, name))
    return max(candidates)[1] if candidates else None


def recorded_ndcg(store: MilvusStore, collection: str) -> float | None:
    return store.record(collection).eval_ndcg_at_10


def promote(store: MilvusStore, collection: str, ndcg: float | None) -> str | None:
    """Move the alias to `collection` atomically; returns the collection it served before."""
    previous = store.alias_target()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    if previous == collection:
        if ndcg is not None:
            store.update_record(collection, eval_ndcg_at_10=ndcg)
        return previous
    promoted: dict[str, object] = {"status": PROMOTED, "promoted_at": stamp}
    if previous:
        promoted["promoted_from"] = previous
    if ndcg is not None:
        promoted["eval_ndcg_at_10"] = ndcg
    store.update_record(collection, **promoted)
    store.point_alias(collection)
    if previous:
        store.update_record(previous, status=RETIRED, retired_at=stamp)
    return previous


def reject(store: MilvusStore, collection: str, reason: str) -> None:
    store.update_record(collection, status=REJECTED, rejected_reason=reason[:500])


def rollback(store: MilvusStore) -> tuple[str, str]:
    """Serve the build that was promoted before the current one. Returns (from, to)."""
    current = store.alias_target()
    if current is None:
        raise RuntimeError(f"the alias {store.alias} does not exist — nothing to roll back")
    previous = store.record(current).promoted_from
    if not previous:
        raise RuntimeError(f"{current} records no previous build (promoted_from) — nothing to roll back to")
    if not store.has_collection(previous):
        raise RuntimeError(f"the previous build {previous} was dropped — rollback needs it; rebuild it instead")
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    store.point_alias(previous)
    store.update_record(previous, status=PROMOTED, promoted_at=stamp)
    store.update_record(current, status=ROLLED_BACK, rolled_back_at=stamp)
    return current, previous


def builds(store: MilvusStore) -> list[dict[str, str]]:
    """Every build under the alias' prefix with its status, newest promotion first."""
    served = store.alias_target()
    rows = []
    for name in store.list_collections():
        record = store.record(name)
        ndcg = "" if record.eval_ndcg_at_10 is None else f"{record.eval_ndcg_at_10:.6f}"
        rows.append(
            {
                "collection": name,
                "served": str(name == served),
                "status": record.status or (PROMOTED if name == served else CANDIDATE),
                "model": record.embedding_version,
                "chunking": record.chunking,
                "ndcg_at_10": ndcg,
                "promoted_at": record.promoted_at,
            }
        )
    rows.sort(key=lambda row: row["promoted_at"], reverse=True)
    return sorted(rows, key=lambda row: row["served"] != "True")  # stable: the newest promotion stays first
