"""The query path as served: the query engine (rag_core.query) on one index snapshot, with the cached query
embedding and retrieval results around it. Every stage is timed into the Prometheus histograms and the
query log."""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import asdict, replace

from rag_core.cache import cache_key
from rag_core.generation import Answer, LLMConfig
from rag_core.query import Query, QueryEngine
from rag_core.retrieval import FusionConfig, RetrievedChunk, SearchFilter
from rag_core.tracing import AnsweredQuery
from rag_serving.schemas import RetrieveRequest
from rag_serving.state import IndexSnapshot, ServingState


class Timings(dict):
    """Milliseconds per stage; and, for the answer's trace, when the request started and when each stage
    first started and last ended (wall clock, ns)."""

    def __init__(self) -> None:
        super().__init__()
        self.started_ns = time.time_ns()
        self.spans: dict[str, tuple[int, int]] = {}

    @contextmanager
    def stage(self, name: str, state: ServingState):
        started, started_ns = time.perf_counter(), time.time_ns()
        try:
            yield
        finally:
            seconds = time.perf_counter() - started
            self[name] = round(self.get(name, 0.0) + seconds * 1000, 3)
            self.spans[name] = (self.spans.get(name, (started_ns, 0))[0], time.time_ns())
            state.metrics.stage.labels(name).observe(seconds)


RETRIEVAL_STAGES = ("embed", "search", "rerank")


def trace_answer(
    state: ServingState,
    tenant: str,
    query_id: str,
    request: RetrieveRequest,
    snapshot: IndexSnapshot,
    chunks: list[RetrievedChunk],
    timings: Timings,
    cached: bool,
    answer: Answer,
) -> str | None:
    """The answer recorded as an MLflow trace (RAG_TRACING) from the times the request noted; its trace id, or
    None when tracing is off or not warmed up yet. A cached retrieval spans from the request's start to the
    answer's."""
    if state.tracer is None:
        return None
    retrieval = [timings.spans[stage] for stage in RETRIEVAL_STAGES if stage in timings.spans]
    retrieved = max((end for _, end in retrieval), default=timings.started_ns)
    generate = timings.spans.get("generate", (retrieved, time.time_ns()))
    return state.tracer.record(
        AnsweredQuery(
            query_id=query_id,
            tenant=tenant,
            question=request.query,
            mode=request.mode,
            top_k=request.top_k,
            index_version=snapshot.index_version,
            cached=cached,
            chunks=chunks,
            answer=answer,
            started_ns=timings.started_ns,
            retrieve_ns=(min((start for start, _ in retrieval), default=timings.started_ns), retrieved),
            generate_ns=generate,
        )
    )


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


def query_vector(
    state: ServingState, snapshot: IndexSnapshot, query: str, timings: Timings, tenant: str
) -> list[float]:
    """Embedded with the model the served build was made with (it follows the alias). Cached per tenant: a
    question is the tenant's data, deleted with it (rag_core.tenant_data)."""
    embedder = snapshot.embedder
    key = cache_key("qvec", embedder.version, query, tenant=tenant)
    cached = state.cache.get(key)
    state.metrics.cache.labels("embedding", "hit" if cached is not None else "miss").inc()
    if cached is not None:
        return cached
    with timings.stage("embed", state):
        vector = state.query_encoder.encode(embedder, query).tolist()
    state.cache.set(key, vector, state.settings.cache_ttl_s)
    return vector


def engine_for(
    state: ServingState, snapshot: IndexSnapshot, timings: Timings, llm: LLMConfig | None = None, *, tenant: str
) -> QueryEngine:
    """The query engine over this snapshot for `tenant`'s request, embedding through the cache and timing into
    `timings`; it answers with `llm` (an A/B arm's answerer), else the deployment's."""
    return QueryEngine(
        snapshot.searcher,
        lambda query: query_vector(state, snapshot, query, timings, tenant),
        snapshot.fusion,
        llm or state.llm,
        lambda stage: timings.stage(stage, state),
        snapshot.reranker,
        state.settings.rerank_candidates,
    )


def retrieve(
    state: ServingState, engine: QueryEngine, request: RetrieveRequest, tenant: str, snapshot: IndexSnapshot
) -> tuple[list[RetrievedChunk], bool]:
    """(chunks, served from cache). The caller's tenant is always part of the search filter."""
    search_filter = SearchFilter.parse(request.filters, tenant).excluding(snapshot.disabled.get(tenant, frozenset()))
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
        sorted(search_filter.excluded),  # a toggled chunk changes the results at once, not after the TTL
        asdict(fusion),
        snapshot.reranker.cache_key if snapshot.reranker else "",  # never shared with unreranked results
        tenant=tenant,
    )
    cached = state.cache.get(key)
    state.metrics.cache.labels("results", "hit" if cached is not None else "miss").inc()
    if cached is not None:
        return [RetrievedChunk(**item) for item in cached], True
    chunks = engine.retrieve(Query(request.query, request.top_k, request.mode, search_filter, fusion))
    state.cache.set(key, [asdict(chunk) for chunk in chunks], state.settings.cache_ttl_s)
    return chunks, False
