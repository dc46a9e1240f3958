"""/v1/admin/tenants: tenants as records — create, list, show (with their document and chunk counts), set
their limits, delete (purging every trace of them, rag_core.tenant_data) — and their API keys. Behind the
admin key (RAG_ADMIN_KEY); a tenant's API key gets 403. `rag tenant …` does the same from a shell."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, status
from fastapi import Path as PathParam

from rag_core.errors import Refusal
from rag_core.querylog import key_id_of
from rag_core.search.engines import IndexNotReady
from rag_core.search.filters import SearchFilter
from rag_core.tenant_data import PurgeIncomplete, PurgeReport, TenantPlaces, purge_tenant, tenant_usage
from rag_core.tenants import TENANT_PATTERN, Tenant, UnknownTenant
from rag_serving.deps import KeyFirstRoute, admin, get_state, unavailable
from rag_serving.routers.admin import ADMIN_REFUSED, KeyId, key_out
from rag_serving.schemas import (
    ApiKeyCreated,
    ApiKeyList,
    ApiKeyRevoked,
    TenantCreateRequest,
    TenantDeletion,
    TenantDetail,
    TenantKeyCreateRequest,
    TenantLimitsUpdate,
    TenantList,
    TenantOut,
    TenantUsageOut,
    error_responses,
)
from rag_serving.state import ServingState

router = APIRouter(
    prefix="/v1/admin/tenants",
    tags=["admin"],
    route_class=KeyFirstRoute,
    dependencies=[Depends(admin)],
    responses={**error_responses(429), **ADMIN_REFUSED},
)
StateDep = Annotated[ServingState, Depends(get_state)]
TenantName = Annotated[str, PathParam(pattern=TENANT_PATTERN, description="The tenant's name.")]


@router.post("", status_code=status.HTTP_201_CREATED, responses=error_responses(409, 413, 422))
def create_tenant(request: TenantCreateRequest, state: StateDep) -> TenantOut:
    """A new tenant with its limits (null: the deployment's defaults). Its folder is `tenant=<name>/`."""
    created = state.db.create_tenant(request.name, request.rate_limit_per_minute, request.max_documents)
    if created is None:
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"tenant {request.name} exists already — change its limits with PATCH /v1/admin/tenants/{request.name}",
        )
    return _tenant_out(created)


@router.get("")
def list_tenants(state: StateDep) -> TenantList:
    """Every tenant, by name, with its limits."""
    return TenantList(tenants=[_tenant_out(tenant) for tenant in state.db.list_tenants()])


@router.get("/{name}", responses=error_responses(404, 422))
def show_tenant(name: TenantName, state: StateDep) -> TenantDetail:
    """The tenant, its limits, its files, documents and chunks in the served build, and how many keys it has."""
    tenant = _known(state, name)
    settings = state.settings
    usage = tenant_usage(
        name, settings.documents_dir, settings.default_tenant, state.catalog, lambda found: _served_rows(state, found)
    )
    keys = len(state.db.list_keys(name))
    return TenantDetail(**_tenant_out(tenant).model_dump(), usage=TenantUsageOut(**vars(usage)), keys=keys)


@router.patch("/{name}", responses=error_responses(404, 413, 422))
def set_tenant_limits(name: TenantName, limits: TenantLimitsUpdate, state: StateDep) -> TenantOut:
    """Change the limits named in the body (null: back to the deployment's default). This API process applies
    them at once, the others within RAG_AUTH_CACHE_TTL_S."""
    try:
        return _tenant_out(state.db.set_tenant_limits(name, **limits.model_dump(include=limits.model_fields_set)))
    except UnknownTenant as error:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(error)) from error


@router.delete("/{name}", responses=error_responses(404, 409, 422, 503))
def delete_tenant(name: TenantName, state: StateDep) -> TenantDeletion:
    """Delete the tenant and purge every trace of it: files, staged outputs, catalog rows, vectors in every
    build, cached results and rate-limit windows, query log, feedback, conversations, keys. 409 for the
    default tenant; 503 when Milvus or Redis stops answering half-way (the record is kept: send it again). The
    answer counts what was deleted where."""
    try:
        report = purge_tenant(name, _places(state))
    except UnknownTenant as error:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(error)) from error
    except PurgeIncomplete as error:
        raise unavailable(state, str(error)) from error
    except Refusal as error:
        raise HTTPException(status.HTTP_409_CONFLICT, str(error)) from error
    state.index.refresh()  # the in-memory engine drops the deleted rows now, not at its next poll
    return _deletion(report)


@router.get("/{name}/keys", responses=error_responses(404, 422))
def list_tenant_keys(name: TenantName, state: StateDep) -> ApiKeyList:
    """The tenant's API keys, newest first, without secrets."""
    _known(state, name)
    return ApiKeyList(keys=[key_out(key) for key in state.db.list_keys(name)])


@router.post("/{name}/keys", status_code=status.HTTP_201_CREATED, responses=error_responses(404, 413, 422))
def create_tenant_key(name: TenantName, request: TenantKeyCreateRequest, state: StateDep) -> ApiKeyCreated:
    """A new key for the tenant; its secret is in this response and nowhere else."""
    _known(state, name)
    plain = state.db.create_key(name, request.name)
    stored = next(key for key in state.db.list_keys(name) if key.key_id == key_id_of(plain))
    return ApiKeyCreated(**key_out(stored).model_dump(), key=plain)


@router.delete("/{name}/keys/{key_id}", responses=error_responses(404, 422))
def revoke_tenant_key(name: TenantName, key_id: KeyId, state: StateDep) -> ApiKeyRevoked:
    """Revoked at once in this process; other API processes stop trusting it within RAG_AUTH_CACHE_TTL_S."""
    if not any(key.key_id == key_id for key in state.db.list_keys(name)) or not state.db.revoke_key(key_id):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"tenant {name} has no API key {key_id}")
    return ApiKeyRevoked(key_id=key_id, revoked=True)


def _known(state: ServingState, name: str) -> Tenant:
    tenant = state.db.tenant(name)
    if tenant is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no tenant {name} — GET /v1/admin/tenants lists them")
    return tenant


def _served_rows(state: ServingState, search_filter: SearchFilter) -> int:
    """The served build's rows the filter allows, from this process' engine; 0 while nothing is served."""
    try:
        snapshot = state.index.current()
    except IndexNotReady:
        return 0
    return len(snapshot.searcher.matching_rows(search_filter))


def _places(state: ServingState) -> TenantPlaces:
    settings = state.settings
    return TenantPlaces(
        documents_dir=settings.documents_dir.resolve(),
        staging_dir=settings.staging_dir,
        default_tenant=settings.default_tenant,
        database=state.db,
        catalog=state.catalog,
        open_store=state.connection.store,
        cache=state.cache,
        limiter=state.limiter,
    )


def _tenant_out(tenant: Tenant) -> TenantOut:
    return TenantOut(**vars(tenant))


def _deletion(report: PurgeReport) -> TenantDeletion:
    return TenantDeletion(tenant=report.tenant, deleted=report.counts(), vectors=report.vectors)
