"""GET /health (alive), GET /ready (can serve: index resolved, embedder, reranker and answerer warm), GET /metrics."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from rag_serving.deps import OptionalCallerDep, get_state
from rag_serving.schemas import Health, Readiness
from rag_serving.state import ServingState

router = APIRouter(tags=["health"])


@router.get("/health")
def health() -> Health:
    return Health(status="alive")


@router.get("/ready", responses={200: {"model": Readiness}})
def ready(who: OptionalCallerDep, state: ServingState = Depends(get_state)) -> JSONResponse:
    """200 once the server can answer, else 503 with the reason. Answered from what the background threads
    saw last (no Milvus or Redis call per probe). The served index, its models and the LLM are shown only
    to a caller with a valid key; an anonymous probe learns the status and whether it is warming up."""
    snapshot, reason = state.readiness()
    if snapshot is None:
        if who is None:
            reason = "warming up" if reason.startswith("warming up") else "the search index is not available"
        return JSONResponse({"status": "not ready", "reason": reason}, status_code=503)
    if who is None:
        return JSONResponse({"status": "ready"})
    return JSONResponse(
        {
            "status": "ready",
            "alias": state.settings.collection_alias,
            "search_engine": state.engine.name,
            "collection": snapshot.collection,
            "index_version": snapshot.index_version,
            "rows": snapshot.rows,
            "embedding_version": snapshot.embedding_version,
            "reranker": snapshot.reranker.version if snapshot.reranker else "off",
            "cache": state.cache.backend,
            "cache_healthy": state.cache_healthy,
            "milvus_healthy": not state.index.milvus_error,  # the memory engine serves while Milvus is down
            "llm_model": state.settings.llm_model,
            "auth": "disabled" if state.settings.auth_disabled else "api keys",
        }
    )


@router.get("/metrics", response_class=PlainTextResponse)  # the Prometheus text format
def metrics(state: ServingState = Depends(get_state)) -> Response:
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
