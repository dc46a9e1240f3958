"""Request dependencies: the app state, authentication (hashed API keys → tenant) and rate limits."""

from __future__ import annotations

import email.message
import hmac
import json
import math
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request, Response, Security, params, status
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from rag_serving.state import IndexNotReady, IndexSnapshot, ServingState


@dataclass(frozen=True)
class Caller:
    key_id: str | None
    tenant: str


async def get_state(request: Request) -> ServingState:
    """`async`, like `index_snapshot`: memory reads run on the event loop, not a thread-pool hop each."""
    return request.app.state.rag


def _presented_key(request: Request) -> str | None:
    if key := request.headers.get("x-api-key"):
        return key.strip()
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def _too_many_failures(retry_after_s: int) -> HTTPException:
    return HTTPException(
        status.HTTP_429_TOO_MANY_REQUESTS,
        "too many failed API key attempts from this address; try again later",
        headers={"Retry-After": str(retry_after_s)},
    )


# Declared for the OpenAPI schema (so /docs' "Authorize" sends the key); `_presented_key` reads either header.
API_KEY_HEADER = APIKeyHeader(name="X-API-Key", auto_error=False, description="A key from `rag-serve create-key`.")
BEARER = HTTPBearer(auto_error=False, description="The same key as `Authorization: Bearer <key>`.")


def caller(
    request: Request,
    state: ServingState = Depends(get_state),
    _api_key: Annotated[str | None, Security(API_KEY_HEADER)] = None,
    _bearer: Annotated[HTTPAuthorizationCredentials | None, Security(BEARER)] = None,
) -> Caller:
    """The authenticated caller, after its rate limit. 401 without a valid key, 429 over the limit, and
    429 for an address over RAG_AUTH_FAILURES_PER_MINUTE failed key attempts (before its key is looked up)."""
    if (checked := getattr(request.state, "caller", None)) is not None:
        return checked  # KeyFirstRoute checked it already, before the body was read
    if state.settings.auth_disabled:
        who = Caller(None, state.settings.default_tenant)
        subject = f"anonymous:{_client_address(request)}"
    else:
        presented = _presented_key(request)
        if not presented:
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                "missing API key — send `X-API-Key: <key>` or `Authorization: Bearer <key>` "
                "(create one with `rag-serve create-key --tenant <name>`)",
                headers={"WWW-Authenticate": "Bearer"},
            )
        address = _client_address(request)
        if refused_for := state.failed_auth.refused_for(address):
            raise _too_many_failures(refused_for)
        key = state.db.authenticate(presented)
        if key is None:
            if refused_for := state.failed_auth.failed(address):
                raise _too_many_failures(refused_for)
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED, "invalid or revoked API key", headers={"WWW-Authenticate": "Bearer"}
            )
        who, subject = Caller(key.key_id, key.tenant), f"key:{key.key_id}"
    # The tenant's own limit, from memory (ServingDatabase.cached_tenant): no SQL on the request path.
    tenant = state.db.cached_tenant(who.tenant)
    per_minute = tenant.rate_limit_per_minute if tenant is not None else None
    decision = state.limiter.hit(subject, per_minute)
    if not decision.allowed:
        limit = state.settings.rate_limit_per_minute if per_minute is None else per_minute
        whose = f"tenant {who.tenant}'s " if per_minute is not None else ""
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            f"{whose}rate limit of {limit} requests per minute per API key exceeded",
            headers={"Retry-After": str(decision.retry_after_s)},
        )
    return who


def optional_caller(request: Request, state: ServingState = Depends(get_state)) -> Caller | None:
    """The caller when a key is presented (checked like `caller`), None for an anonymous probe."""
    if not state.settings.auth_disabled and _presented_key(request) is None:
        return None
    return caller(request, state)


OptionalCallerDep = Annotated[Caller | None, Depends(optional_caller)]

ADMIN_KEY_HEADER = APIKeyHeader(
    name="X-Admin-Key", scheme_name="AdminKey", auto_error=False, description="RAG_ADMIN_KEY, for /v1/admin."
)


def admin(
    request: Request,
    state: ServingState = Depends(get_state),
    presented: Annotated[str | None, Security(ADMIN_KEY_HEADER)] = None,
) -> None:
    """Lets the request through with the admin key (RAG_ADMIN_KEY). 403 while no admin key is set and for a
    tenant's API key (admin keys are distinct from tenant keys), 401 without any key or with a wrong admin
    key; a wrong one counts as a failed key attempt of the address (429 past the limit)."""
    configured = state.settings.admin_key.get_secret_value()
    if not configured:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            "the admin routes are off — set RAG_ADMIN_KEY (a long random secret) for the API and send it as "
            "`X-Admin-Key: <key>`",
        )
    address = _client_address(request)
    if refused_for := state.failed_auth.refused_for(address):
        raise _too_many_failures(refused_for)
    if not presented and _presented_key(request) is not None:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            "a tenant API key cannot use the admin routes — send `X-Admin-Key: <RAG_ADMIN_KEY>` instead",
        )
    if not presented or not hmac.compare_digest(presented.strip().encode(), configured.encode()):
        if presented and (refused_for := state.failed_auth.failed(address)):
            raise _too_many_failures(refused_for)
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "missing or wrong admin key — send `X-Admin-Key: <RAG_ADMIN_KEY>` (an API key is not one)",
            headers={"WWW-Authenticate": 'APIKey header="X-Admin-Key"'},
        )


def unavailable(state: ServingState, reason: str) -> HTTPException:
    """503 for what comes back by itself (Milvus, the served index, the serving database), saying when to
    try again: the follower looks again every RAG_ALIAS_POLL_S."""
    retry_after_s = max(1, math.ceil(state.settings.alias_poll_s))
    return HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, reason, headers={"Retry-After": str(retry_after_s)})


async def index_snapshot(state: ServingState = Depends(get_state)) -> IndexSnapshot:
    try:
        return state.index.current()
    except IndexNotReady as error:
        raise unavailable(state, str(error)) from error


def _needs_key(dependant: Dependant) -> bool:
    return any(d.call is caller or _needs_key(d) for d in dependant.dependencies)


class KeyFirstRoute(APIRoute):
    """A route that checks the caller's key (and rate limit) before it reads the request body.

    FastAPI reads and parses the body before it solves dependencies, so a plain route would parse a
    keyless request's JSON, or spool its upload to disk, before answering 401. Here the key comes first;
    then a JSON body is read (capped by `limits.RequestBodyLimit`) and must be UTF-8 JSON, else 422 (FastAPI
    would guess another encoding from NUL bytes, or answer 400 to a body nested too deep)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        keyed = _needs_key(self.dependant)
        json_body = self.body_field is not None and not isinstance(self.body_field.field_info, params.Form)

        async def key_first(request: Request) -> Response:
            if keyed:
                request.state.caller = await run_in_threadpool(caller, request, await get_state(request))
            if json_body and _declares_json(request.headers.get("content-type")):
                body = await request.body()
                if body:  # an empty body: FastAPI answers "Field required"
                    # Starlette caches the parsed body here, so FastAPI does not parse it a second time.
                    request._json = _json_text(body)
            return await handler(request)

        return key_first


def _declares_json(content_type: str | None) -> bool:
    """What FastAPI parses as JSON: application/json or application/*+json."""
    if not content_type:
        return False
    header = email.message.Message()
    header["content-type"] = content_type
    subtype = header.get_content_subtype()
    return header.get_content_maintype() == "application" and (subtype == "json" or subtype.endswith("+json"))


def _json_text(body: bytes) -> Any:
    """The body parsed as UTF-8 JSON, else 422 naming the problem."""
    try:
        return json.loads(body.decode("utf-8"))
    except UnicodeDecodeError as error:
        problem = {"type": "utf8", "msg": f"the body is not valid UTF-8 (byte {error.start}) — encode JSON as UTF-8"}
    except (ValueError, RecursionError) as error:
        problem = {"type": "json_invalid", "msg": f"the body is not valid JSON ({error})"}
    raise RequestValidationError([{**problem, "loc": ("body",)}])
