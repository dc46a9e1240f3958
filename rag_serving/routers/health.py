"""GET /health (alive), GET /ready (can serve: alias, Milvus, matching embedder), GET /metrics."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from rag_serving.deps import get_state
from rag_serving.state import IndexNotReady, ServingState

router = APIRouter(tags=["health"])


@router.get("/health")
def health() -> dict:
    return {"status": "alive"}


@router.get("/ready")
def ready(state: ServingState = Depends(get_state)) -> JSONResponse:
    try:
        snapshot = state.index.current()
    except IndexNotReady as error:
        return JSONResponse({"status": "not ready", "reason": str(error)}, status_code=503)
    return JSONResponse(
        {
            "status": "ready",
            "alias": state.settings.collection_alias,
            "search_engine": state.engine.name,
            "collection": snapshot.collection,
            "index_version": snapshot.index_version,
            "rows": snapshot.rows,
            "embedding_version": snapshot.embedding_version,
            "cache": state.cache.backend,
            "cache_healthy": state.cache.healthy(),
            "llm_model": state.settings.llm_model,
            "auth": "disabled" if state.settings.auth_disabled else "api keys",
        }
    )


@router.get("/metrics")
def metrics(state: ServingState = Depends(get_state)) -> Response:
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
