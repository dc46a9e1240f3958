"""Documents: upload into the watched folder, status from the catalog, delete from the folder.
The serving process never indexes — the Dagster sensor picks every change up."""

from __future__ import annotations

import hashlib
import re
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, UploadFile, status
from fastapi import Path as PathParam

from rag_core.catalog import STALE, CatalogEntry
from rag_core.documents import (
    SUPPORTED_SUFFIXES,
    TENANT_DIR_PREFIX,
    ParseLimits,
    SourceUnit,
    decode_text,
    discover_sources,
    suffix_of,
)
from rag_core.ids import source_key
from rag_core.settings import Settings
from rag_core.tenant_data import stored_documents
from rag_core.tenants import InvalidTenant, TenantQuotaExceeded, check_document_quota, validate_tenant
from rag_serving.deps import Caller, KeyFirstRoute, caller, get_state
from rag_serving.runs import RunInfo
from rag_serving.schemas import (
    MAX_NAME_CHARS,
    NAME_PATTERN,
    TEXT_PATTERN,
    DocumentDeletion,
    DocumentItem,
    DocumentPage,
    DocumentState,
    DocumentStatus,
    IndexRun,
    Reindexing,
    UploadedDocument,
    UploadResponse,
    error_responses,
)
from rag_serving.state import IndexNotReady, IndexSnapshot, ServingState

router = APIRouter(
    prefix="/v1/documents", tags=["documents"], route_class=KeyFirstRoute, responses=error_responses(401, 403, 429)
)
DocId = Annotated[str, PathParam(min_length=1, max_length=MAX_NAME_CHARS, pattern=NAME_PATTERN)]
CallerDep = Annotated[Caller, Depends(caller)]
StateDep = Annotated[ServingState, Depends(get_state)]
MAX_PAGE = 200
StatusFilter = Annotated[DocumentState | None, Query(alias="status", description="Only documents in this state.")]
NameFilter = Annotated[
    str, Query(max_length=MAX_NAME_CHARS, pattern=TEXT_PATTERN, description="Part of the source path, any case.")
]
SAFE_NAME = re.compile(r"[^A-Za-z0-9._ -]+")
# A stored name in bytes: with its temporary `.<name>.<8 hex>.uploading` it stays under the usual 255-byte limit.
MAX_NAME_BYTES = 200
COPY_CHUNK_BYTES = 1 << 20
MAGIC = {".pdf": (b"%PDF",), ".docx": (b"PK\x03\x04",), ".jsonl.gz": (b"\x1f\x8b",)}


def _tenant_folder(state: ServingState, tenant: str) -> tuple[Path, str]:
    """(folder, relative prefix) for a tenant's files inside the watched folder. 403 for a key whose
    tenant is not a valid name (created before names were checked): its folder could be anywhere."""
    root = state.settings.documents_dir.resolve()
    if tenant == state.settings.default_tenant:
        return root, ""
    try:
        validate_tenant(tenant, "this API key's tenant")
    except InvalidTenant as error:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, f"{error} — revoke the key and create one for a valid tenant name"
        ) from error
    return root / f"{TENANT_DIR_PREFIX}{tenant}", f"{TENANT_DIR_PREFIX}{tenant}/"


def stored_name(filename: str) -> str:
    """The name an upload is stored under: safe characters only, at most MAX_NAME_BYTES, its extension kept.
    When sanitising changes the name, a short hash of the original is added, so two different names (say
    `Café.md` and `Cafè.md`) never become the same file. 415 for an unsupported extension."""
    original = Path(filename).name
    suffix = suffix_of(Path(original))
    if suffix not in SUPPORTED_SUFFIXES:
        raise HTTPException(
            status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
            f"{suffix or 'no extension'} is not supported; upload one of {', '.join(SUPPORTED_SUFFIXES)}",
        )
    stem, extension = original[: -len(suffix)], original[-len(suffix) :]
    safe = SAFE_NAME.sub("_", stem).strip(" .")
    if safe and safe == stem and len(original.encode()) <= MAX_NAME_BYTES:
        return original
    digest = hashlib.sha256(original.encode("utf-8", "surrogatepass")).hexdigest()[:10]
    room = MAX_NAME_BYTES - len(digest) - len(extension) - 1
    return f"{safe[:room]}-{digest}{extension}" if safe else f"{digest}{extension}"


async def _stage(upload: UploadFile, temporary: Path, limit_bytes: int) -> int:
    """Copy the upload to `temporary` a chunk at a time, refusing it (413) as soon as it passes the limit."""
    size = 0
    with temporary.open("wb") as target:
        while chunk := await upload.read(COPY_CHUNK_BYTES):
            size += len(chunk)
            if size > limit_bytes:
                raise HTTPException(
                    status.HTTP_413_CONTENT_TOO_LARGE,
                    f"{upload.filename} is over the {limit_bytes / 1e6:g} MB upload limit (RAG_UPLOAD_MAX_MB)",
                )
            target.write(chunk)
    return size


def _validate_upload(name: str, staged: Path) -> None:
    suffix = suffix_of(Path(name))
    content = staged.read_bytes()  # at most the upload limit
    if not content.strip():
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"{name}: the file is empty")
    if suffix in MAGIC and not content.startswith(MAGIC[suffix]):
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"{name}: the content is not a valid {suffix} file")
    if suffix not in MAGIC:
        try:
            decode_text(content)
        except Exception as error:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"{name}: {error}") from error


@router.post("", status_code=status.HTTP_202_ACCEPTED, responses=error_responses(400, 409, 413, 415, 422))
async def upload_documents(
    file: list[UploadFile], who: Caller = Depends(caller), state: ServingState = Depends(get_state)
) -> UploadResponse:
    """Store every `file` part of the request in the watched folder (the tenant's folder); the sensor indexes
    them. Same name = new version. One refused file refuses the request: then nothing is stored. 409 when the
    new names would take the tenant past its document quota (`max_documents`, set by an admin)."""
    names = [stored_name(upload.filename or "") for upload in file]
    if repeated := sorted({name for name in names if names.count(name) > 1}):
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT, f"more than one file of this request is named {repeated[0]}"
        )
    folder, prefix = _tenant_folder(state, who.tenant)
    _check_quota(state, who.tenant, folder, names)
    folder.mkdir(parents=True, exist_ok=True)
    limit_bytes = int(state.settings.upload_max_mb * 1e6)
    temporaries: list[Path] = []
    sizes: list[int] = []
    try:
        for upload, name in zip(file, names, strict=True):
            temporaries.append(folder / f".{name}.{uuid.uuid4().hex[:8]}.uploading")  # the sensor skips dot files
            sizes.append(await _stage(upload, temporaries[-1], limit_bytes))
            _validate_upload(name, temporaries[-1])
    except BaseException:
        for temporary in temporaries:
            temporary.unlink(missing_ok=True)
        raise
    for temporary, name in zip(temporaries, names, strict=True):
        temporary.replace(folder / name)  # atomic: the sensor never sees half a file
    return UploadResponse(
        documents=[
            UploadedDocument(
                doc_id=source_key(prefix + name),
                source=prefix + name,
                filename=upload.filename or "",
                status="pending",
                bytes=size,
            )
            for upload, name, size in zip(file, names, sizes, strict=True)
        ]
    )


def _check_quota(state: ServingState, tenant: str, folder: Path, names: list[str]) -> None:
    """409 before anything is written when the tenant's `max_documents` has no room for the new names (a file
    replacing one of the same name takes none). 409, not 413 or 429: the request is fine and waiting does not
    help; the tenant's state (its quota is full) is what refuses it."""
    record = state.db.cached_tenant(tenant)
    if record is None or record.max_documents is None:
        return
    stored = stored_documents(state.settings.documents_dir.resolve(), tenant, state.settings.default_tenant)
    adding = sum(not (folder / name).exists() for name in names)
    try:
        check_document_quota(record, len(stored), adding)
    except TenantQuotaExceeded as error:
        raise HTTPException(status.HTTP_409_CONFLICT, str(error)) from error


def _locate(doc_id: str, who: Caller, state: ServingState) -> tuple[Path | None, DocumentStatus | None]:
    folder, prefix = _tenant_folder(state, who.tenant)
    entry = state.catalog.entries([doc_id]).get(doc_id)
    if entry is not None and entry.tenant != who.tenant:
        entry = None
    path = None
    if entry is not None:
        path = state.settings.documents_dir.resolve() / entry.source
    elif folder.is_dir():
        path = next((p for p in folder.iterdir() if p.is_file() and source_key(prefix + p.name) == doc_id), None)
    if entry is None and path is None:
        return None, None
    if entry is None:
        return path, DocumentStatus(
            doc_id=doc_id, status="pending", source=prefix + path.name, tenant=who.tenant, chunks=0
        )
    pending = path is not None and path.exists() and _is_newer(path, entry.updated_at)
    return path, DocumentStatus(
        doc_id=doc_id,
        status="pending" if pending else entry.status,
        source=entry.source,
        tenant=entry.tenant,
        chunks=entry.chunks,
        reason="; ".join(entry.quarantined),
        index_version=_served_version(state, entry.collection),
        collection=entry.collection,
        embedding_version=entry.embedding_version,
    )


def _served_version(state: ServingState, collection: str) -> str:
    """The index version serving this document: empty when its build is not the published one."""
    try:
        snapshot = state.index.current()
    except IndexNotReady:
        return ""
    return snapshot.index_version if snapshot.collection == collection else ""


def _is_newer(path: Path, indexed_at) -> bool:
    return indexed_at is not None and path.stat().st_mtime > indexed_at.timestamp()


@router.get("", responses=error_responses(422))
def list_documents(
    who: CallerDep,
    state: StateDep,
    status_is: StatusFilter = None,
    name: NameFilter = "",
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
) -> DocumentPage:
    """The caller's documents in source order, with status, chunks, size, modification time, the served
    index version and the latest Dagster run of each (filter by status and by part of the name)."""
    _tenant_folder(state, who.tenant)  # 403 for a key whose tenant has no valid folder
    units = [unit for unit in _discover(state.settings) if unit.tenant == who.tenant]
    entries = state.catalog.entries([unit.partition_key for unit in units])
    listed = [
        (unit, entries.get(unit.partition_key)) for unit in units if name.casefold() in unit.relative_path.casefold()
    ]
    if status_is is not None:
        listed = [(unit, entry) for unit, entry in listed if _state_of(unit, entry) == status_is]
    page = listed[offset : offset + limit]
    runs = state.runs.latest([unit.partition_key for unit, _entry in page])
    served = _served_snapshot(state)
    return DocumentPage(
        total=len(listed),
        offset=offset,
        limit=limit,
        documents=[item for unit, entry in page if (item := _item(unit, entry, served, runs.get(unit.partition_key)))],
    )


def _discover(settings: Settings) -> list[SourceUnit]:
    limits = ParseLimits(
        settings.max_file_mb, settings.max_expanded_mb, settings.max_compression_ratio, settings.max_document_chars
    )
    units = discover_sources(settings.documents_dir, settings.default_tenant, settings.jsonl_shard_size, limits)
    return sorted(units, key=lambda unit: (unit.relative_path, unit.partition_key))


def _state_of(unit: SourceUnit, entry: CatalogEntry | None) -> str:
    """As the sensor sees it: a file the catalog does not know, or knows with other content, is pending."""
    if entry is None:
        return "pending"
    if entry.status == STALE:
        return STALE
    return entry.status if entry.content_hash == unit.content_hash else "pending"


def _item(
    unit: SourceUnit, entry: CatalogEntry | None, served: IndexSnapshot | None, run: RunInfo | None
) -> DocumentItem | None:
    """The row of `unit`; None when its file was deleted since the folder was listed."""
    try:
        stat = unit.path.lstat()  # lstat: a link out of the folder is never followed
    except FileNotFoundError:
        return None
    # Rows in the served build (a file quarantined from the start has none): its index version.
    indexed = entry is not None and entry.chunks > 0 and served is not None and served.collection == entry.collection
    return DocumentItem(
        doc_id=unit.partition_key,
        source=unit.relative_path,
        status=_state_of(unit, entry),
        reason="; ".join(entry.quarantined) if entry is not None else "",
        chunks=entry.chunks if entry is not None else 0,
        bytes=stat.st_size,
        modified_at=datetime.fromtimestamp(stat.st_mtime, UTC),
        index_version=served.index_version if indexed else "",
        run=IndexRun(run_id=run.run_id, status=run.status, url=run.url) if run is not None else None,
    )


def _served_snapshot(state: ServingState) -> IndexSnapshot | None:
    try:
        return state.index.current()
    except IndexNotReady:
        return None


@router.get("/{doc_id}", response_model=DocumentStatus, responses=error_responses(404, 422))
def document_status(doc_id: DocId, who: Caller = Depends(caller), state: ServingState = Depends(get_state)):
    """pending (uploaded, not yet indexed) / indexed / quarantined (with the reason) / stale."""
    _path, found = _locate(doc_id, who, state)
    if found is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no document {doc_id} for this tenant")
    return found


@router.delete("/{doc_id}", status_code=status.HTTP_202_ACCEPTED, responses=error_responses(404, 409, 422))
def delete_document(
    doc_id: DocId, who: Caller = Depends(caller), state: ServingState = Depends(get_state)
) -> DocumentDeletion:
    """Delete the file from the watched folder; the sensor then deletes its vectors."""
    path, found = _locate(doc_id, who, state)
    if found is None or path is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no document {doc_id} for this tenant")
    if suffix_of(path) in (".jsonl", ".jsonl.gz"):
        raise HTTPException(status.HTTP_409_CONFLICT, f"{found.source} is a corpus file; remove records by editing it")
    path.unlink(missing_ok=True)
    return DocumentDeletion(doc_id=doc_id, status="deleting")


@router.post("/{doc_id}/reindex", status_code=status.HTTP_202_ACCEPTED, responses=error_responses(404, 409, 422))
def reindex_document(doc_id: DocId, who: CallerDep, state: StateDep) -> Reindexing:
    """Index the document again (after a fix to the parser or the chunking, say): it is marked stale in the
    catalog and the sensor re-indexes it on its next tick."""
    path, found = _locate(doc_id, who, state)
    if found is None or path is None or not path.exists():
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no document {doc_id} for this tenant")
    if not state.catalog.entries([doc_id]):
        raise HTTPException(
            status.HTTP_409_CONFLICT, f"{found.source} is not indexed yet: the sensor indexes it on its next tick"
        )
    state.catalog.mark_stale([doc_id])
    return Reindexing(doc_id=doc_id, status="stale")
