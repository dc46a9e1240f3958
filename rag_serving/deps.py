"""Request dependencies: the app state, authentication (hashed API keys → tenant) and rate limits."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Depends, HTTPException, Request, status

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


def caller(request: Request, state: ServingState = Depends(get_state)) -> Caller:
    """The authenticated caller, after its rate limit. 401 without a valid key, 429 over the limit."""
    if state.settings.auth_disabled:
        who = Caller(None, state.settings.default_tenant)
        subject = f"anonymous:{request.client.host if request.client else 'unknown'}"
    else:
        presented = _presented_key(request)
        if not presented:
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                "missing API key — send `X-API-Key: <key>` or `Authorization: Bearer <key>` "
                "(create one with `rag-serve create-key --tenant <name>`)",
                headers={"WWW-Authenticate": "Bearer"},
            )
        key = state.db.authenticate(presented)
        if key is None:
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED, "invalid or revoked API key", headers={"WWW-Authenticate": "Bearer"}
            )
        who, subject = Caller(key.key_id, key.tenant), f"key:{key.key_id}"
    decision = state.limiter.hit(subject)
    if not decision.allowed:
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            f"rate limit of {state.settings.rate_limit_per_minute} requests per minute exceeded",
            headers={"Retry-After": str(decision.retry_after_s)},
        )
    return who


async def index_snapshot(state: ServingState = Depends(get_state)) -> IndexSnapshot:
    try:
        return state.index.current()
    except IndexNotReady as error:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(error)) from error
