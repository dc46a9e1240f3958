"""The app factory: `create_app(settings)` builds an app around one ServingState (tests build their own)."""

from __future__ import annotations

import copy
import functools
import inspect
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel
from starlette.exceptions import HTTPException

from rag_core import logs
from rag_core.search.engines import IndexNotReady
from rag_core.settings import Settings, get_settings
from rag_core.store import MilvusUnavailable
from rag_serving.deps import unavailable
from rag_serving.docs import add_docs
from rag_serving.limits import MULTIPART_OVERHEAD_BYTES, RequestBodyLimit
from rag_serving.routers import (
    admin,
    chunks,
    conversations,
    documents,
    experiments,
    feedback,
    health,
    query,
    query_log,
    tenants,
)
from rag_serving.schemas import bounded_requests
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
        docs_url=None,  # rag_serving.docs serves Swagger UI itself: the default page needs a CDN
        redoc_url=None,
    )
    add_docs(app)
    bodies = bounded_requests(settings)
    routers = (health, query, feedback, documents, chunks, conversations, query_log, admin, tenants, experiments)
    for router in (module.router for module in routers):
        app.include_router(_with_bodies(router, bodies))
    upload_limit = int(settings.upload_max_mb * 1e6) + MULTIPART_OVERHEAD_BYTES
    uploads = {("POST", "/v1/documents"): upload_limit}
    app.add_middleware(RequestBodyLimit, default_limit=settings.max_request_bytes, route_limits=uploads)

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
        """schemas.ValidationErrorBody. Never echoes the input; a lone surrogate in a dict key is escaped."""
        errors = [
            {
                "loc": [part if isinstance(part, int) else _printable(str(part)) for part in item["loc"]],
                "msg": _printable(item["msg"]),
                "type": item["type"],
            }
            for item in error.errors()
        ]
        problems = [
            f"{'.'.join(str(part) for part in item['loc'] if part != 'body')}: {item['msg']}" for item in errors
        ]
        return JSONResponse({"detail": "; ".join(problems), "errors": errors}, status_code=422)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        """schemas.ErrorBody (a 422 also carries `errors`, empty: the request was refused as a whole)."""
        body: dict[str, Any] = {"detail": _printable(str(error.detail))}
        if error.status_code == 422:
            body["errors"] = []
        return JSONResponse(body, status_code=error.status_code, headers=error.headers)

    @app.exception_handler(MilvusUnavailable)
    @app.exception_handler(IndexNotReady)
    @app.exception_handler(sa.exc.OperationalError)
    @app.exception_handler(sa.exc.InterfaceError)
    async def comes_back_by_itself(request: Request, error: Exception) -> JSONResponse:
        """503 + Retry-After, not 500, for a dependency that is restarting: Milvus going away under a request
        (the follower then answers 503 before the search), or the serving database (keys, feedback)."""
        if isinstance(error, sa.exc.DBAPIError):
            reason = (
                f"the serving database is not answering ({type(error.orig).__name__}) — retry shortly; if it "
                "lasts, check the database behind RAG_SERVING_DB_URL"
            )
        else:
            reason = str(error)
        return await http_error(request, unavailable(request.app.state.rag, reason))

    @app.get("/", include_in_schema=False)
    def web_page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    # The console: static pages (no build step) that call the JSON API with the key the user gives them.
    app.mount("/console", StaticFiles(directory=STATIC / "console", html=True), name="console")

    return app


def _printable(text: str) -> str:
    """`text` as valid UTF-8: a lone surrogate (from a JSON escape) becomes its escape again."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _with_bodies(router: APIRouter, bodies: Mapping[type[BaseModel], type[BaseModel]]) -> APIRouter:
    """`router`, its routes taking the bounded request models of `bodies` in place of the plain ones."""
    bound = APIRouter()
    for route in router.routes:
        route = copy.copy(route)
        route.endpoint = _accepting(route.endpoint, bodies)
        bound.routes.append(route)
    return bound


def _accepting(endpoint: Callable[..., Any], bodies: Mapping[type[BaseModel], type[BaseModel]]) -> Callable[..., Any]:
    """`endpoint` with a signature naming the bounded models (FastAPI reads the body model from it)."""
    signature = inspect.signature(endpoint, eval_str=True)
    parameters = [p.replace(annotation=bodies.get(p.annotation, p.annotation)) for p in signature.parameters.values()]
    if parameters == list(signature.parameters.values()):
        return endpoint
    if inspect.iscoroutinefunction(endpoint):

        @functools.wraps(endpoint)
        async def bounded(*args: Any, **kwargs: Any) -> Any:
            return await endpoint(*args, **kwargs)
    else:

        @functools.wraps(endpoint)
        def bounded(*args: Any, **kwargs: Any) -> Any:
            return endpoint(*args, **kwargs)

    bounded.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
    return bounded
