"""Documents: upload into the watched folder, status from the catalog, delete from the folder.
The serving process never indexes — the Dagster sensor picks every change up."""

from __future__ import annotations

import re
from pathlib import Path

from fastapi import APIRouter, Depends, HTTPException, UploadFile, status

from rag_core.documents import SUPPORTED_SUFFIXES, TENANT_DIR_PREFIX, decode_text, suffix_of
from rag_core.ids import source_key
from rag_serving.deps import Caller, caller, get_state
from rag_serving.schemas import DocumentStatus
from rag_serving.state import IndexNotReady, ServingState

router = APIRouter(prefix="/v1/documents", tags=["documents"])
SAFE_NAME = re.compile(r"[^A-Za-z0-9._ -]+")
MAGIC = {".pdf": (b"%PDF",), ".docx": (b"PK\x03\x04",), ".jsonl.gz": (b"\x1f\x8b",)}


def _tenant_folder(state: ServingState, tenant: str) -> tuple[Path, str]:
    """(folder, relative prefix) for a tenant's files inside the watched folder."""
    root = state.settings.documents_dir.resolve()
    if tenant == state.settings.default_tenant:
        return root, ""
    return root / f"{TENANT_DIR_PREFIX}{tenant}", f"{TENANT_DIR_PREFIX}{tenant}/"


def _validate_upload(name: str, content: bytes, limit_mb: float) -> None:
    suffix = suffix_of(Path(name))
    if suffix not in SUPPORTED_SUFFIXES:
        raise HTTPException(
            status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
            f"{suffix or 'no extension'} is not supported; upload one of {', '.join(SUPPORTED_SUFFIXES)}",
        )
    if len(content) > limit_mb * 1e6:
        raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, f"file is over the {limit_mb:g} MB upload limit")
    if not content.strip():
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "the file is empty")
    if suffix in MAGIC and not content.startswith(MAGIC[suffix]):
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"the content is not a valid {suffix} file")
    if suffix not in MAGIC:
        try:
            decode_text(content)
        except Exception as error:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(error)) from error


@router.post("", status_code=status.HTTP_202_ACCEPTED)
async def upload_document(
    file: UploadFile, who: Caller = Depends(caller), state: ServingState = Depends(get_state)
) -> dict:
    """Store a file in the watched folder (the tenant's folder); the sensor indexes it. Same name = new version."""
    name = SAFE_NAME.sub("_", Path(file.filename or "").name).strip(" .")
    if not name:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "the upload needs a file name")
    content = await file.read(int(state.settings.upload_max_mb * 1e6) + 1)
    _validate_upload(name, content, state.settings.upload_max_mb)
    folder, prefix = _tenant_folder(state, who.tenant)
    folder.mkdir(parents=True, exist_ok=True)
    temporary = folder / f".{name}.uploading"
    temporary.write_bytes(content)
    temporary.replace(folder / name)  # atomic: the sensor never sees half a file
    doc_id = source_key(prefix + name)
    return {"doc_id": doc_id, "source": prefix + name, "status": "pending", "bytes": len(content)}


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


@router.get("/{doc_id}", response_model=DocumentStatus)
def document_status(doc_id: str, who: Caller = Depends(caller), state: ServingState = Depends(get_state)):
    """pending (uploaded, not yet indexed) / indexed / quarantined (with the reason) / stale."""
    _path, found = _locate(doc_id, who, state)
    if found is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no document {doc_id} for this tenant")
    return found


@router.delete("/{doc_id}", status_code=status.HTTP_202_ACCEPTED)
def delete_document(doc_id: str, who: Caller = Depends(caller), state: ServingState = Depends(get_state)) -> dict:
    """Delete the file from the watched folder; the sensor then deletes its vectors."""
    path, found = _locate(doc_id, who, state)
    if found is None or path is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no document {doc_id} for this tenant")
    if suffix_of(path) in (".jsonl", ".jsonl.gz"):
        raise HTTPException(status.HTTP_409_CONFLICT, f"{found.source} is a corpus file; remove records by editing it")
    path.unlink(missing_ok=True)
    return {"doc_id": doc_id, "status": "deleting"}
