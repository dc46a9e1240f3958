"""Request and response bodies of the public API (kept apart from storage models)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator

from rag_core.query import DEFAULT_MODE, DEFAULT_TOP_K
from rag_core.search.filters import FILTERABLE, MAX_FILTER_VALUES
from rag_core.settings import Settings

# Text a person typed: no control characters but tab and line breaks. A pattern (not a Python check) so the
# OpenAPI schema states it, and so pydantic also refuses a lone surrogate (it cannot be matched as UTF-8).
TEXT_PATTERN = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]*$"
# An identifier or a filter value: no control characters at all.
NAME_PATTERN = r"^[^\x00-\x1f\x7f-\x9f]+$"
MAX_NAME_CHARS = 512
MAX_COMMENT_CHARS = 4000

Name = Annotated[str, Field(min_length=1, max_length=MAX_NAME_CHARS, pattern=NAME_PATTERN)]
FilterField = Literal[FILTERABLE]  # type: ignore[valid-type]
FilterValues = Name | Annotated[list[Name], Field(min_length=1, max_length=MAX_FILTER_VALUES)]


EXAMPLE_QUESTION = "What does the embedding cache key on?"


class RetrieveRequest(BaseModel):
    # The example /docs' Try-it-out sends: a valid request (a generated one would send filter placeholders).
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"query": EXAMPLE_QUESTION, "top_k": 5, "mode": "hybrid"}]}
    )

    query: str = Field(..., min_length=1, pattern=TEXT_PATTERN, description="The question or search text.")
    top_k: int = Field(DEFAULT_TOP_K, ge=1, description="Chunks to return (bounded by RAG_MAX_TOP_K).")
    mode: Literal["dense", "bm25", "hybrid"] = DEFAULT_MODE
    filters: dict[FilterField, FilterValues] = Field(
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
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"query": EXAMPLE_QUESTION, "top_k": 5, "stream": False}]}
    )

    stream: bool = Field(False, description="Stream the answer as server-sent events.")


def bounded_requests(settings: Settings) -> dict[type[BaseModel], type[BaseModel]]:
    """The request bodies with this deployment's limits (RAG_MAX_QUERY_CHARS, RAG_MAX_TOP_K) as field
    constraints, so validation and the OpenAPI schema state the same limits. Built per app (`create_app`)."""
    limits: dict[str, Any] = {
        "query": (
            str,
            Field(
                ...,
                min_length=1,
                max_length=settings.max_query_chars,
                pattern=TEXT_PATTERN,
                description="The question or search text.",
            ),
        ),
        "top_k": (int, Field(DEFAULT_TOP_K, ge=1, le=settings.max_top_k, description="Chunks to return.")),
    }
    return {
        base: create_model(base.__name__, __base__=base, __module__=__name__, **limits)
        for base in (RetrieveRequest, QueryRequest)
    }


class ChunkOut(BaseModel):
    chunk_id: str
    doc_id: str
    title: str
    text: str
    source: str
    score: float = Field(..., description="The retrieval score (dense, BM25 or fused).")
    start_char: int
    end_char: int
    rerank_score: float | None = Field(
        None, description="The reranker's score when RAG_RERANK_MODEL is set; chunks are then in its order."
    )


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


class ScreenedSource(BaseModel):
    number: int = Field(..., description="The source's number in `sources`.")
    chunk_id: str
    action: Literal["dropped", "flagged"]
    rules: list[str] = Field(..., description="The injection rules it tripped (rag_core.injection).")


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
    screened: list[ScreenedSource] = Field(
        default_factory=list, description="Sources the injection screen kept out of the prompt or flagged in it."
    )
    question_flags: list[str] = Field(
        default_factory=list, description="Injection rules the question tripped (reported; it is still answered)."
    )


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"query_id": "<query_id from /v1/query>", "rating": 5, "is_relevant": True}]}
    )

    query_id: Name
    rating: int | None = Field(None, ge=1, le=5)
    is_relevant: bool | None = None
    comment: str = Field("", max_length=MAX_COMMENT_CHARS, pattern=TEXT_PATTERN)


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


class FeedbackCreated(BaseModel):
    feedback_id: int
    query_id: str


class WorstQuery(BaseModel):
    query_id: str
    question: str
    mean_rating: float


class FeedbackAnalytics(BaseModel):
    queries: int
    feedback: int
    feedback_rate: float
    mean_rating: float | None
    relevance_rate: float | None
    worst_queries: list[WorstQuery]


class UploadedDocument(BaseModel):
    doc_id: str
    source: str = Field(..., description="Where it was stored: the sanitised, unique file name in the tenant's folder.")
    filename: str = Field(..., description="The name it was uploaded with.")
    status: Literal["pending"]
    bytes: int


class UploadResponse(BaseModel):
    documents: list[UploadedDocument] = Field(..., description="Every file of the request, in request order.")


class DocumentDeletion(BaseModel):
    doc_id: str
    status: Literal["deleting"]


class Health(BaseModel):
    status: Literal["alive"]


class ErrorBody(BaseModel):
    """Every error response: one line that says what is wrong and how to fix it."""

    detail: str


class FieldError(BaseModel):
    loc: list[str | int] = Field(..., description="Where: `body`, `query` or `path`, then the field path.")
    msg: str
    type: str


class ValidationErrorBody(ErrorBody):
    """422: `detail` sums the problems up in one line; `errors` lists them per field (empty when the request
    is well-formed but refused as a whole, e.g. an empty file)."""

    errors: list[FieldError]


ERROR_MEANINGS = {
    400: "The multipart body cannot be parsed.",
    401: "Missing, invalid or revoked API key.",
    403: "The key's tenant may not do this.",
    404: "Not found for the caller's tenant.",
    409: "The request conflicts with the resource's state.",
    413: "The request body (or a file in it) is over its limit.",
    415: "The file type is not supported.",
    422: "The request is not valid: see `errors`.",
    429: "Too many requests; retry after `Retry-After` seconds.",
    503: "The search index is not available yet.",
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The `responses=` of a route that can answer with these error codes."""
    return {
        code: {"model": ValidationErrorBody if code == 422 else ErrorBody, "description": ERROR_MEANINGS[code]}
        for code in codes
    }
