"""The app factory: `create_app(settings)` builds an app around one ServingState (tests build their own)."""

from __future__ import annotations

import logging
import time
import uuid
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse

from rag_core import logs
from rag_core.settings import Settings, get_settings
from rag_serving.routers import documents, feedback, health, query
from rag_serving.state import ServingState

log = logging.getLogger("rag_serving")
STATIC = Path(__file__).parent / "static"


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    if settings.log_format == "json":
        logs.configure_logging("json")

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if settings.auth_disabled:
            log.warning(
                "\n" + "!" * 78 + "\n!! AUTHENTICATION IS DISABLED (RAG_AUTH_DISABLED=true): every request is tenant "
                f"{settings.default_tenant!r}.\n!! Use this for the embedded demo only.\n" + "!" * 78
            )
        app.state.rag = ServingState(settings)
        try:
            yield
        finally:
            app.state.rag.close()

    app = FastAPI(
        title="RAG platform API",
        version="0.1.0",
        description="Hybrid retrieval and cited answers over the index the Dagster assets materialized.",
        lifespan=lifespan,
    )
    for router in (health.router, query.router, feedback.router, documents.router):
        app.include_router(router)

    @app.middleware("http")
    async def observe(request: Request, call_next):
        request_id = request.headers.get("x-request-id") or uuid.uuid4().hex[:16]
        token = logs.request_id.set(request_id)  # every log line of this request carries it
        started = time.perf_counter()
        try:
            response = await call_next(request)
            route = request.scope.get("route")
            path = getattr(route, "path", "unmatched")
            seconds = time.perf_counter() - started
            metrics = request.app.state.rag.metrics
            metrics.requests.labels(path, request.method, str(response.status_code)).inc()
            metrics.latency.labels(path).observe(seconds)
            log.info(
                "%s %s → %s in %.1f ms", request.method, path, response.status_code, seconds * 1000,
                extra={"route": path, "method": request.method, "status": response.status_code,
                       "ms": round(seconds * 1000, 1)},
            )
        finally:
            logs.request_id.reset(token)
        response.headers["X-Request-ID"] = request_id
        return response

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        problems = [
            f"{'.'.join(str(part) for part in item['loc'] if part != 'body')}: {item['msg']}" for item in error.errors()
        ]
        return JSONResponse({"detail": "; ".join(problems)}, status_code=422)

    @app.get("/", include_in_schema=False)
    def web_page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    return app
