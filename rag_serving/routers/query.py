"""POST /v1/retrieve and POST /v1/query (optionally streamed as server-sent events)."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator

from fastapi import APIRouter, Depends, HTTPException, status
from fastapi.responses import StreamingResponse

from rag_core.generation import Answer, relevance
from rag_core.query import QueryEngine
from rag_core.retrieval import InvalidFilter, RetrievedChunk
from rag_serving.deps import Caller, KeyFirstRoute, caller, get_state, index_snapshot
from rag_serving.experiments import Assignment, observe, unit_of
from rag_serving.schemas import (
    ChunkOut,
    ChunkScores,
    Citation,
    FusionOut,
    QueryRequest,
    QueryResponse,
    RetrieveRequest,
    RetrieveResponse,
    ScreenedSource,
    error_responses,
)
from rag_serving.service import Timings, engine_for, fusion_for, retrieve, trace_answer
from rag_serving.state import IndexSnapshot, ServingState

log = logging.getLogger("rag_serving")
# The request models' limits (RAG_MAX_QUERY_CHARS, RAG_MAX_TOP_K) are set per app: schemas.bounded_requests.
router = APIRouter(
    prefix="/v1", tags=["query"], route_class=KeyFirstRoute, responses=error_responses(401, 413, 422, 429, 503)
)
EVENT_STREAM = {
    "description": "The answer (`QueryResponse`), or with `stream: true` server-sent events: `sources`, "
    "`delta`…, then `done` — or `error` if the answer failed part-way.",
    "content": {
        "text/event-stream": {
            "schema": {  # one event; its `data` is JSON: the sources, {"text"}, the answer, or {"detail"}
                "type": "object",
                "required": ["event", "data"],
                "properties": {"event": {"enum": ["sources", "delta", "done", "error"]}, "data": {"type": "string"}},
            }
        }
    },
}


def _retrieve(request: RetrieveRequest, who: Caller, state: ServingState, snapshot: IndexSnapshot, engine: QueryEngine):
    try:
        return retrieve(state, engine, request, who.tenant, snapshot)
    except InvalidFilter as error:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(error)) from error


def _scores(chunk: RetrievedChunk) -> ChunkScores:
    return ChunkScores(
        dense_score=None if chunk.dense_score is None else round(chunk.dense_score, 6),
        dense_rank=chunk.dense_rank,
        bm25_score=None if chunk.bm25_score is None else round(chunk.bm25_score, 6),
        bm25_rank=chunk.bm25_rank,
    )


def _chunks_out(chunks: list[RetrievedChunk], explain: bool = False) -> list[ChunkOut]:
    return [
        ChunkOut(
            chunk_id=c.chunk_id,
            doc_id=c.doc_id,
            title=c.title,
            text=c.text,
            source=c.source,
            score=round(c.score, 6),
            start_char=c.start_char,
            end_char=c.end_char,
            rerank_score=None if c.rerank_score is None else round(c.rerank_score, 6),
            scores=_scores(c) if explain else None,
        )
        for c in chunks
    ]


def _relevance(state: ServingState, chunks: list[RetrievedChunk]) -> dict[str, float | None]:
    """The best chunk's similarity beside the threshold it is held to: a console draws the line from these."""
    best = relevance(chunks)
    return {
        "relevance": None if best is None else round(best, 6),
        "relevance_threshold": state.llm.relevance_threshold,
    }


def _citations(answer: Answer, chunks: list[RetrievedChunk]) -> list[Citation]:
    return [
        Citation(
            number=n,
            chunk_id=chunks[n - 1].chunk_id,
            doc_id=chunks[n - 1].doc_id,
            title=chunks[n - 1].title,
            source=chunks[n - 1].source,
        )
        for n in answer.citations
    ]


def _screened(answer: Answer) -> list[ScreenedSource]:
    return [
        ScreenedSource(number=s.number, chunk_id=s.chunk_id, action=s.action, rules=list(s.rules))
        for s in answer.screened
    ]


def _count(state: ServingState, answer: Answer) -> None:
    if answer.degraded:
        state.metrics.degraded.inc()
    for screened in answer.screened:
        state.metrics.screened.labels("source", screened.action).inc()
    if answer.question_flags:
        state.metrics.screened.labels("question", "flagged").inc()


def _arm(assigned: Assignment | None) -> dict[str, str]:
    """The A/B experiment and arm, for the query log row and the response."""
    return {} if assigned is None else {"experiment": assigned.experiment, "arm": assigned.arm.name}


def _assigned(request, who: Caller, state: ServingState, snapshot: IndexSnapshot):
    """(the request as the caller's A/B arm serves it, the snapshot it searches, the assignment or None)."""
    return state.experiments.apply(request, who.tenant, unit_of(request.user_id, who.key_id), snapshot)


def _log(state: ServingState, who: Caller, request: RetrieveRequest, chunks, timings, snapshot, **extra) -> str:
    return state.db.log_query(
        tenant=who.tenant,
        key_id=who.key_id,
        question=request.query,
        mode=request.mode,
        top_k=request.top_k,
        chunk_ids=[c.chunk_id for c in chunks],
        timings_ms=dict(timings),
        index_version=snapshot.index_version,
        **extra,
    )


@router.post("/retrieve", response_model=RetrieveResponse)
def retrieve_chunks(
    request: RetrieveRequest,
    who: Caller = Depends(caller),
    state: ServingState = Depends(get_state),
    snapshot: IndexSnapshot = Depends(index_snapshot),
) -> RetrieveResponse:
    """Dense, BM25 or hybrid (convex or RRF fusion) retrieval over the published index, within the caller's tenant."""
    request, snapshot, assigned = _assigned(request, who, state, snapshot)
    timings = Timings()
    chunks, cached = _retrieve(request, who, state, snapshot, engine_for(state, snapshot, timings, tenant=who.tenant))
    arm = _arm(assigned)
    query_id = _log(state, who, request, chunks, timings, snapshot, model="", degraded=False, cached=cached, **arm)
    observe(state, assigned, "retrieve", timings, degraded=False)
    fusion = fusion_for(request, snapshot)
    return RetrieveResponse(
        query_id=query_id,
        chunks=_chunks_out(chunks, request.explain),
        mode=request.mode,
        index_version=snapshot.index_version,
        cached=cached,
        timings_ms=dict(timings),
        fusion=FusionOut(
            method=fusion.method,
            dense_weight=fusion.dense_weight,
            bm25_weight=fusion.bm25_weight,
            rrf_k=fusion.rrf_k,
            head_bonus=fusion.head_bonus,
        )
        if request.explain
        else None,
        **_relevance(state, chunks),
        **arm,
    )


@router.post("/query", response_model=QueryResponse, responses={200: EVENT_STREAM})
def answer_query(
    request: QueryRequest,
    who: Caller = Depends(caller),
    state: ServingState = Depends(get_state),
    snapshot: IndexSnapshot = Depends(index_snapshot),
):
    """Retrieve, then answer through litellm with numbered citations `[n]` that map to `sources`.
    With `stream: true` the answer arrives as server-sent events: `sources`, `delta`…, `done`."""
    request, snapshot, assigned = _assigned(request, who, state, snapshot)
    timings = Timings()
    engine = engine_for(state, snapshot, timings, assigned.llm if assigned else None, tenant=who.tenant)
    chunks, cached = _retrieve(request, who, state, snapshot, engine)
    if request.stream:
        events = _event_stream(request, who, state, snapshot, engine, chunks, timings, cached, assigned)
        return StreamingResponse(
            _ending_with_error(events),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    answer = engine.answer(request.query, chunks)
    return answered(request, who, state, snapshot, chunks, timings, cached, answer, assigned)


def answered(
    request, who, state, snapshot, chunks, timings, cached, answer: Answer, assigned: Assignment | None = None
) -> QueryResponse:
    """The tail of every answer, JSON, streamed or a conversation's turn: counted, traced, logged with its trace,
    and given its query id."""
    _count(state, answer)
    query_id = str(uuid.uuid4())
    trace_id = trace_answer(state, who.tenant, query_id, request, snapshot, chunks, timings, cached, answer)
    logged = {"model": answer.model, "degraded": answer.degraded, "cached": cached, "trace_id": trace_id}
    _log(state, who, request, chunks, timings, snapshot, query_id=query_id, **logged, **_arm(assigned))
    observe(state, assigned, "query", timings, answer.degraded)
    return QueryResponse(
        query_id=query_id,
        trace_id=trace_id,
        answer=answer.text,
        citations=_citations(answer, chunks),
        sources=_chunks_out(chunks),
        model=answer.model,
        degraded=answer.degraded,
        reason=answer.reason,
        index_version=snapshot.index_version,
        timings_ms=dict(timings),
        screened=_screened(answer),
        question_flags=list(answer.question_flags),
        **_relevance(state, chunks),
        **_arm(assigned),
    )


def _sse(event: str, data: object) -> str:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"


def _ending_with_error(events: Iterator[str]) -> Iterator[str]:
    """The status line (200) is sent with the first event: a failure after it cannot change the status, so
    the stream ends with an `error` event instead of stopping without a `done`."""
    try:
        yield from events
    except Exception as error:
        log.exception("a streamed answer failed part-way")
        yield _sse("error", {"detail": f"the answer failed part-way ({type(error).__name__}); ask again"})


def _event_stream(request, who, state, snapshot, engine, chunks, timings, cached, assigned) -> Iterator[str]:
    yield _sse("sources", [chunk.model_dump() for chunk in _chunks_out(chunks)])
    answer = None
    for delta, final in engine.stream(request.query, chunks):
        if delta:
            yield _sse("delta", {"text": delta})
        if final is not None:
            answer = final
    response = answered(request, who, state, snapshot, chunks, timings, cached, answer, assigned)
    yield _sse("done", response.model_dump(exclude={"sources"}))
