"""/v1/admin/keys: API keys per tenant (list, create, revoke) for the console's admin page, behind the
admin key (RAG_ADMIN_KEY). A key's secret is in the create response only; the database keeps its hash."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, status
from fastapi import Path as PathParam

from rag_core.querylog import StoredKey, key_id_of
from rag_core.tenants import TENANT_PATTERN
from rag_serving.deps import KeyFirstRoute, admin, get_state
from rag_serving.schemas import (
    ApiKeyCreated,
    ApiKeyList,
    ApiKeyOut,
    ApiKeyRevoked,
    ErrorBody,
    KeyCreateRequest,
    error_responses,
)
from rag_serving.state import ServingState

ADMIN_REFUSED = {
    401: {"model": ErrorBody, "description": "X-Admin-Key is missing or is not RAG_ADMIN_KEY."},
    403: {
        "model": ErrorBody,
        "description": "The admin routes are off (RAG_ADMIN_KEY is not set), or a tenant API key was sent.",
    },
}
router = APIRouter(
    prefix="/v1/admin/keys",
    tags=["admin"],
    route_class=KeyFirstRoute,
    dependencies=[Depends(admin)],
    responses={**error_responses(429), **ADMIN_REFUSED},
)
StateDep = Annotated[ServingState, Depends(get_state)]
KeyId = Annotated[str, PathParam(pattern=r"^[0-9a-f]{1,32}$")]


@router.get("", responses=error_responses(422))
def list_keys(
    state: StateDep,
    tenant: Annotated[str | None, Query(pattern=TENANT_PATTERN, description="Only this tenant's.")] = None,
) -> ApiKeyList:
    """Every API key (of `tenant`), newest first, without secrets."""
    return ApiKeyList(keys=[key_out(key) for key in state.db.list_keys(tenant)])


@router.post("", status_code=status.HTTP_201_CREATED, responses=error_responses(413, 422))
def create_key(request: KeyCreateRequest, state: StateDep) -> ApiKeyCreated:
    """A new key for `tenant`; its secret is in this response and nowhere else."""
    plain = state.db.create_key(request.tenant, request.name)
    key_id = key_id_of(plain)
    stored = next(key for key in state.db.list_keys(request.tenant) if key.key_id == key_id)
    return ApiKeyCreated(**key_out(stored).model_dump(), key=plain)


@router.delete("/{key_id}", responses=error_responses(404, 422))
def revoke_key(key_id: KeyId, state: StateDep) -> ApiKeyRevoked:
    """Revoked at once in this process; other API processes stop trusting it within RAG_AUTH_CACHE_TTL_S."""
    if not state.db.revoke_key(key_id):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no API key {key_id}")
    return ApiKeyRevoked(key_id=key_id, revoked=True)


def key_out(key: StoredKey) -> ApiKeyOut:
    return ApiKeyOut(
        key_id=key.key_id, tenant=key.tenant, name=key.name, created_at=key.created_at, revoked=key.revoked
    )
