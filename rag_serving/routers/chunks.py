"""A document's chunks as the served index holds them (the console's chunk viewer), and enabling or disabling
one. A disabled chunk stays in the index but no search returns it (rag_core.catalog: `rag_disabled_chunks`)."""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, status
from fastapi import Path as PathParam

from rag_core.search.filters import SearchFilter
from rag_serving.deps import Caller, KeyFirstRoute, caller, get_state, index_snapshot
from rag_serving.schemas import (
    MAX_NAME_CHARS,
    NAME_PATTERN,
    ChunkedDocument,
    ChunkState,
    ChunkToggle,
    ChunkView,
    DocumentChunks,
    Redaction,
    error_responses,
)
from rag_serving.state import IndexSnapshot, ServingState

router = APIRouter(
    prefix="/v1/documents",
    tags=["documents"],
    route_class=KeyFirstRoute,
    responses=error_responses(401, 404, 422, 429, 503),
)
CallerDep = Annotated[Caller, Depends(caller)]
StateDep = Annotated[ServingState, Depends(get_state)]
SnapshotDep = Annotated[IndexSnapshot, Depends(index_snapshot)]
DocId = Annotated[str, PathParam(min_length=1, max_length=MAX_NAME_CHARS, pattern=NAME_PATTERN)]
# A chunk id holds `/` (scope/doc#position:hash): the path converter takes the rest of the path.
ChunkId = Annotated[str, PathParam(min_length=1, max_length=256, pattern=NAME_PATTERN)]
REDACTED = re.compile(r"\[REDACTED_([A-Z_]+)\]")  # the mark rag_core.pii.redact leaves


def _rows(doc_id: str, tenant: str, snapshot: IndexSnapshot) -> list[dict]:
    """The document's rows in the served build, within the tenant: another tenant's document is not found."""
    rows = snapshot.searcher.matching_rows(SearchFilter(tenant, (("source_key", (doc_id,)),), rows="chunks"))
    if not rows:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND,
            f"no indexed document {doc_id} for this tenant in the served index — GET /v1/documents lists them",
        )
    return sorted(rows, key=lambda row: (row["doc_id"], row["position"]))


def _rebuilt(rows: list[dict]) -> str:
    """The document text the offsets index into: chunks cover every token, so a gap is whitespace only."""
    text = [" "] * max(row["end_char"] for row in rows)
    for row in rows:
        text[row["start_char"] : row["end_char"]] = row["text"]
    return "".join(text)


def _view(row: dict, tokens: int, disabled: frozenset[str]) -> ChunkView:
    start = row["start_char"]
    return ChunkView(
        chunk_id=row["chunk_id"],
        position=row["position"],
        start_char=start,
        end_char=row["end_char"],
        tokens=tokens,
        text=row["text"],
        enabled=row["chunk_id"] not in disabled,
        redactions=[
            Redaction(kind=mark.group(1), start_char=start + mark.start(), end_char=start + mark.end())
            for mark in REDACTED.finditer(row["text"])
        ],
    )


@router.get("/{doc_id}/chunks")
def document_chunks(doc_id: DocId, who: CallerDep, snapshot: SnapshotDep) -> DocumentChunks:
    """The document's chunks in order, per record, with offsets into its text, token counts, PII-redaction
    marks and whether each is enabled. Read from the served index: nothing is parsed or chunked again."""
    rows = _rows(doc_id, who.tenant, snapshot)
    disabled = snapshot.disabled.get(who.tenant, frozenset())
    records: dict[str, list[dict]] = {}
    for row in rows:
        records.setdefault(row["doc_id"], []).append(row)
    # Measured as the chunker measured them: the passage's tokens, without special tokens, in one batch.
    encoded = snapshot.embedder.tokenizer([row["text"] for row in rows], add_special_tokens=False)["input_ids"]
    tokens = {row["chunk_id"]: len(ids) for row, ids in zip(rows, encoded, strict=True)}
    return DocumentChunks(
        doc_id=doc_id,
        source=rows[0]["source"],
        index_version=snapshot.index_version,
        disabled=sum(row["chunk_id"] in disabled for row in rows),
        documents=[
            ChunkedDocument(
                doc_id=record,
                title=chunks[0]["title"],
                text=_rebuilt(chunks),
                chunks=[_view(row, tokens[row["chunk_id"]], disabled) for row in chunks],
            )
            for record, chunks in records.items()
        ],
    )


@router.patch("/{doc_id}/chunks/{chunk_id:path}")
def toggle_chunk(
    doc_id: DocId, chunk_id: ChunkId, toggle: ChunkToggle, who: CallerDep, state: StateDep, snapshot: SnapshotDep
) -> ChunkState:
    """Enable or disable one chunk of the caller's document. A disabled chunk is excluded from every search
    (every API process sees it within RAG_ALIAS_POLL_S) and stays disabled when unchanged content is
    re-indexed (chunk ids are deterministic). URL-encode the chunk id's `#` as `%23`."""
    if chunk_id not in {row["chunk_id"] for row in _rows(doc_id, who.tenant, snapshot)}:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"document {doc_id} has no chunk {chunk_id} for this tenant")
    state.catalog.set_chunk_enabled(who.tenant, doc_id, chunk_id, toggle.enabled)
    state.index.refresh_disabled()
    return ChunkState(doc_id=doc_id, chunk_id=chunk_id, enabled=toggle.enabled)
