"""The query path as served: the query engine (rag_core.query) on one index snapshot, with the cached query
embedding and retrieval results around it. Every stage is timed into the Prometheus histograms and the
query log."""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import asdict, replace

from rag_core.cache import cache_key
from rag_core.query import Query, QueryEngine
from rag_core.retrieval import FusionConfig, RetrievedChunk, SearchFilter
from rag_serving.schemas import RetrieveRequest
from rag_serving.state import IndexSnapshot, ServingState


class Timings(dict):
    @contextmanager
    def stage(self, name: str, state: ServingState):
        started = time.perf_counter()
        try:
            yield
        finally:
            seconds = time.perf_counter() - started
            self[name] = round(self.get(name, 0.0) + seconds * 1000, 3)
            state.metrics.stage.labels(name).observe(seconds)


def fusion_for(request: RetrieveRequest, snapshot: IndexSnapshot) -> FusionConfig:
    """The snapshot's fusion (rag_core.promotion.served_fusion), with what the request overrides."""
    defaults = snapshot.fusion
    return replace(
        defaults,
        rrf_k=request.rrf_k or defaults.rrf_k,
        dense_weight=defaults.dense_weight if request.dense_weight is None else request.dense_weight,
        bm25_weight=defaults.bm25_weight if request.bm25_weight is None else request.bm25_weight,
        method=request.fusion or defaults.method,
    )


def query_vector(state: ServingState, snapshot: IndexSnapshot, query: str, timings: Timings) -> list[float]:
    """Embedded with the model the served build was made with (it follows the alias)."""
    embedder = snapshot.embedder
    key = cache_key("qvec", embedder.version, query)
    cached = state.cache.get(key)
    state.metrics.cache.labels("embedding", "hit" if cached is not None else "miss").inc()
    if cached is not None:
        return cached
    with timings.stage("embed", state):
        vector = state.query_encoder.encode(embedder, query).tolist()
    state.cache.set(key, vector, state.settings.cache_ttl_s)
    return vector


def engine_for(state: ServingState, snapshot: IndexSnapshot, timings: Timings) -> QueryEngine:
    """The query engine over this snapshot, embedding through the cache and timing into `timings`."""
    return QueryEngine(
        snapshot.searcher,
        lambda query: query_vector(state, snapshot, query, timings),
        snapshot.fusion,
        state.llm,
        lambda stage: timings.stage(stage, state),
        state.reranker,
        state.settings.rerank_candidates,
    )


def retrieve(
    state: ServingState, engine: QueryEngine, request: RetrieveRequest, tenant: str, snapshot: IndexSnapshot
) -> tuple[list[RetrievedChunk], bool]:
    """(chunks, served from cache). The caller's tenant is always part of the search filter."""
    search_filter = SearchFilter.parse(request.filters, tenant)
    fusion = fusion_for(request, snapshot)
    key = cache_key(
        "retrieved",  # not "retrieve": entries of that name hold a field chunks no longer have (ranks)
        snapshot.index_version,
        snapshot.collection,
        request.query,
        request.mode,
        request.top_k,
        request.filters,
        tenant,
        asdict(fusion),
        (state.reranker.version, state.reranker.weight) if state.reranker else "",  # never shared with unreranked
    )
    cached = state.cache.get(key)
    state.metrics.cache.labels("results", "hit" if cached is not None else "miss").inc()
    if cached is not None:
        return [RetrievedChunk(**item) for item in cached], True
    chunks = engine.retrieve(Query(request.query, request.top_k, request.mode, search_filter, fusion))
    state.cache.set(key, [asdict(chunk) for chunk in chunks], state.settings.cache_ttl_s)
    return chunks, False
