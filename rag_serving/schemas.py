"""Request and response bodies of the public API (kept apart from storage models)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, field_validator


class RetrieveRequest(BaseModel):
    query: str = Field(..., description="The question or search text.")
    top_k: int = Field(5, ge=1, description="Chunks to return (bounded by RAG_MAX_TOP_K).")
    mode: Literal["dense", "bm25", "hybrid"] = "hybrid"
    filters: dict[str, str | list[str]] = Field(
        default_factory=dict, description="Exact-match filters on doc_id, source, source_key or title."
    )
    fusion: Literal["rrf", "convex"] | None = Field(None, description="Hybrid fusion (default from settings).")
    rrf_k: int | None = Field(None, ge=1, le=1000, description="RRF constant for hybrid (default from settings).")
    dense_weight: float | None = Field(None, ge=0, le=10)
    bm25_weight: float | None = Field(None, ge=0, le=10)

    @field_validator("query")
    @classmethod
    def _query_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("query must not be empty")
        return value.strip()


class QueryRequest(RetrieveRequest):
    stream: bool = Field(False, description="Stream the answer as server-sent events.")


class ChunkOut(BaseModel):
    chunk_id: str
    doc_id: str
    title: str
    text: str
    source: str
    score: float
    start_char: int
    end_char: int


class RetrieveResponse(BaseModel):
    query_id: str
    chunks: list[ChunkOut]
    mode: str
    index_version: str
    cached: bool
    timings_ms: dict[str, float]


class Citation(BaseModel):
    number: int
    chunk_id: str
    doc_id: str
    title: str
    source: str


class QueryResponse(BaseModel):
    query_id: str
    answer: str
    citations: list[Citation]
    sources: list[ChunkOut]
    model: str
    degraded: bool
    reason: str
    index_version: str
    timings_ms: dict[str, float]


class FeedbackRequest(BaseModel):
    query_id: str
    rating: int | None = Field(None, ge=1, le=5)
    is_relevant: bool | None = None
    comment: str = Field("", max_length=4000)


class DocumentStatus(BaseModel):
    doc_id: str
    status: Literal["pending", "indexed", "quarantined", "stale"]
    source: str
    tenant: str
    chunks: int
    reason: str = ""
    index_version: str = Field("", description="The served index version, when its build is the published one.")
    collection: str = ""
    embedding_version: str = ""
