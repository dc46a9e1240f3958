"""Request and response bodies of the public API (kept apart from storage models)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator

from rag_core.query import DEFAULT_MODE, DEFAULT_TOP_K
from rag_core.search.filters import FILTERABLE, MAX_FILTER_VALUES
from rag_core.settings import Settings
from rag_core.tenants import TENANT_PATTERN

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
    dense_weight: float | None = Field(None, ge=0, le=1, description="Hybrid weight of the dense list (0..1).")
    bm25_weight: float | None = Field(None, ge=0, le=1, description="Hybrid weight of the BM25 list (0..1).")
    explain: bool = Field(
        False, description="Add each chunk's dense and BM25 scores and ranks, and the fusion used (the playground)."
    )
    user_id: Name | None = Field(
        None,
        max_length=128,
        description="Your end user's stable id: an A/B experiment assigns it one arm for good (default: the API key).",
    )

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


class ChunkScores(BaseModel):
    """A chunk's place in the dense and BM25 lists before fusion (None: that list did not find it)."""

    dense_score: float | None = Field(None, description="Cosine similarity to the query.")
    dense_rank: int | None = None
    bm25_score: float | None = None
    bm25_rank: int | None = None


class FusionOut(BaseModel):
    method: Literal["rrf", "convex"]
    dense_weight: float
    bm25_weight: float
    rrf_k: int
    head_bonus: float = Field(description="Added to the cosine of each document's first chunk (dense side).")


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
    scores: ChunkScores | None = Field(None, description="With `explain`: where each list placed the chunk.")


RELEVANCE = Field(
    ..., description="The best cosine similarity of a returned chunk to the query; null when none has one (BM25)."
)
RELEVANCE_THRESHOLD = Field(
    ...,
    description="RAG_RELEVANCE_THRESHOLD: below it an answer says the documents do not contain one (a console "
    "draws it as a line over the chunks' dense scores).",
)


class RetrieveResponse(BaseModel):
    query_id: str
    chunks: list[ChunkOut]
    mode: str
    index_version: str
    cached: bool
    timings_ms: dict[str, float]
    fusion: FusionOut | None = Field(None, description="With `explain`: the hybrid fusion this query used.")
    relevance: float | None = RELEVANCE
    relevance_threshold: float = RELEVANCE_THRESHOLD
    experiment: str | None = Field(None, description="The A/B experiment that served this request, if any.")
    arm: str | None = Field(None, description="Its arm (the same for the same user or key throughout).")


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
    relevance: float | None = RELEVANCE
    relevance_threshold: float = RELEVANCE_THRESHOLD
    trace_id: str | None = Field(
        None, description="The answer's MLflow trace (RAG_TRACING); null while tracing is off or warming up."
    )
    experiment: str | None = Field(None, description="The A/B experiment that served this request, if any.")
    arm: str | None = Field(None, description="Its arm (the same for the same user or key throughout).")


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"query_id": "<query_id from /v1/query>", "rating": 5, "is_relevant": True}]}
    )

    query_id: Name
    rating: int | None = Field(None, ge=1, le=5)
    is_relevant: bool | None = None
    comment: str = Field("", max_length=MAX_COMMENT_CHARS, pattern=TEXT_PATTERN)
    chunk_id: Name | None = Field(None, max_length=128, description="The chunk the user clicked or found cited.")


DocumentState = Literal["pending", "indexed", "quarantined", "stale"]


class DocumentStatus(BaseModel):
    doc_id: str
    status: DocumentState
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


class IndexRun(BaseModel):
    run_id: str
    status: str = Field(..., description="Dagster's run status: QUEUED, STARTED, SUCCESS, FAILURE, CANCELED, ...")
    url: str = Field(..., description="The run in the Dagster UI (RAG_DAGSTER_UI_URL).")


class DocumentItem(BaseModel):
    doc_id: str = Field(..., description="The partition key (a file, or one shard of a .jsonl corpus).")
    source: str
    status: DocumentState
    reason: str = Field("", description="Why it is quarantined.")
    chunks: int
    bytes: int = Field(..., description="The file's size on disk.")
    modified_at: datetime = Field(..., description="The file's modification time (UTC).")
    index_version: str = Field("", description="The served index version, when its build is the published one.")
    run: IndexRun | None = Field(None, description="Its latest index run in Dagster, if any.")


class DocumentPage(BaseModel):
    total: int = Field(..., description="Documents matching the filters, over all pages.")
    offset: int
    limit: int
    documents: list[DocumentItem]


class Reindexing(BaseModel):
    doc_id: str
    status: Literal["stale"] = Field(..., description="Marked stale: the sensor re-indexes it on its next tick.")


class LoggedFeedbackOut(BaseModel):
    rating: int | None
    is_relevant: bool | None
    comment: str
    created_at: datetime


class LogItem(BaseModel):
    query_id: str
    created_at: datetime
    question: str
    mode: str
    top_k: int
    chunk_ids: list[str]
    timings_ms: dict[str, float] = Field(..., description="Per stage, e.g. embed, search, generate, total.")
    model: str
    index_version: str
    degraded: bool
    cached: bool
    feedback: list[LoggedFeedbackOut]
    trace_url: str | None = Field(None, description="The answer's MLflow trace, when one was recorded.")


class LogPage(BaseModel):
    total: int = Field(..., description="Queries matching the filters, over all pages.")
    offset: int
    limit: int
    queries: list[LogItem]


class KeyCreateRequest(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"tenant": "acme", "name": "support bot"}]})

    tenant: str = Field(..., pattern=TENANT_PATTERN, description="The tenant whose documents the key reaches.")
    name: str = Field("", max_length=256, pattern=TEXT_PATTERN, description="What the key is for.")


class ApiKeyOut(BaseModel):
    key_id: str
    tenant: str
    name: str
    created_at: datetime
    revoked: bool


class ApiKeyCreated(ApiKeyOut):
    key: str = Field(..., description="The secret: shown in this response only (the database keeps its hash).")


class ApiKeyList(BaseModel):
    keys: list[ApiKeyOut]


class ApiKeyRevoked(BaseModel):
    key_id: str
    revoked: Literal[True]


RateLimit = Annotated[
    int | None,
    Field(ge=0, description="Requests per minute per API key of the tenant; null: RAG_RATE_LIMIT_PER_MINUTE; 0: none."),
]
MaxDocuments = Annotated[
    int | None, Field(ge=0, description="Files the tenant may hold in the documents folder; null: no quota.")
]


class TenantCreateRequest(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"name": "acme", "rate_limit_per_minute": 60, "max_documents": 1000}]}
    )

    name: str = Field(..., pattern=TENANT_PATTERN, description="The tenant's name: its folder is `tenant=<name>/`.")
    rate_limit_per_minute: RateLimit = None
    max_documents: MaxDocuments = None


class TenantLimitsUpdate(BaseModel):
    """The limits to change: a field left out stays as it is, null returns it to the deployment's default."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"max_documents": 5000}]})

    rate_limit_per_minute: RateLimit = None
    max_documents: MaxDocuments = None


class TenantOut(BaseModel):
    name: str
    created_at: datetime
    rate_limit_per_minute: int | None
    max_documents: int | None


class TenantList(BaseModel):
    tenants: list[TenantOut]


class TenantUsageOut(BaseModel):
    files: int = Field(..., description="Files in the tenant's folder, indexed or not: what max_documents counts.")
    documents: int = Field(..., description="Documents the catalog records (a JSONL corpus file holds many).")
    chunks: int = Field(..., description="The tenant's chunks in the served build.")


class TenantDetail(TenantOut):
    usage: TenantUsageOut
    keys: int = Field(..., description="Its API keys, revoked ones included.")


class TenantKeyCreateRequest(BaseModel):
    name: str = Field("", max_length=256, pattern=TEXT_PATTERN, description="What the key is for.")


class TenantDeletion(BaseModel):
    """What deleting the tenant purged, per place."""

    tenant: str
    deleted: dict[str, int] = Field(
        ...,
        description="Rows, files or entries per place: files, staged_files, catalog_rows, disabled_chunks, "
        "vectors, cache_entries, rate_limit_windows, queries, feedback, conversations, conversation_turns, "
        "experiment_exclusions, api_keys.",
    )
    vectors: dict[str, int] = Field(..., description="Vectors deleted per collection (served and candidates).")


class Health(BaseModel):
    status: Literal["alive"]


class Readiness(BaseModel):
    """GET /ready when the server can answer. An anonymous probe gets `status` only; a caller with a valid
    key also sees what is served."""

    status: Literal["ready"]
    alias: str | None = None
    search_engine: str | None = None
    collection: str | None = None
    index_version: str | None = None
    rows: int | None = None
    embedding_version: str | None = None
    reranker: str | None = Field(None, description="The reranker's version, or `off`.")
    cache: str | None = Field(None, description="`redis` or `memory`.")
    cache_healthy: bool | None = None
    milvus_healthy: bool | None = Field(None, description="The memory engine serves while Milvus is down.")
    llm_model: str | None = None
    auth: str | None = Field(None, description="`api keys`, or `disabled` for a demo.")



class Redaction(BaseModel):
    kind: str = Field(..., description="What was redacted: EMAIL, PHONE, CREDIT_CARD, … (RAG_REDACT_PII).")
    start_char: int = Field(..., description="Where the `[REDACTED_<KIND>]` mark starts in the document text.")
    end_char: int


class ChunkView(BaseModel):
    chunk_id: str
    position: int = Field(..., description="The chunk's place in its document, from 0.")
    start_char: int = Field(..., description="Where the chunk starts in the document text.")
    end_char: int
    tokens: int = Field(..., description="Tokens of the passage, by the served build's tokenizer.")
    text: str
    enabled: bool = Field(..., description="False: disabled — kept in the index, never retrieved.")
    redactions: list[Redaction]


class ChunkedDocument(BaseModel):
    doc_id: str = Field(..., description="The record's id: the file's, or a `.jsonl` record's `_id`.")
    title: str
    text: str = Field(
        ..., description="The normalised text the offsets index into, rebuilt from the chunks (gaps are blanks)."
    )
    chunks: list[ChunkView]


class DocumentChunks(BaseModel):
    doc_id: str = Field(..., description="The partition key, as in GET /v1/documents.")
    source: str
    index_version: str
    disabled: int = Field(..., description="How many of its chunks are disabled.")
    documents: list[ChunkedDocument] = Field(..., description="One per record (a file holds one).")


class ChunkToggle(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"enabled": False}]})

    enabled: bool = Field(..., description="False excludes the chunk from retrieval; it survives re-indexing.")


class ChunkState(BaseModel):
    doc_id: str
    chunk_id: str
    enabled: bool


USER_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,127}$"


class ConversationCreate(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"title": "Embedding cache"}]})

    title: str = Field("", max_length=256, pattern=TEXT_PATTERN, description="Empty: the first question.")


class ConversationMessage(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"question": EXAMPLE_QUESTION}]})

    question: str = Field(..., min_length=1, pattern=TEXT_PATTERN, description="A question or a follow-up to the last.")
    top_k: int = Field(DEFAULT_TOP_K, ge=1, description="Chunks to answer from (bounded by RAG_MAX_TOP_K).")
    mode: Literal["dense", "bm25", "hybrid"] = DEFAULT_MODE

    @field_validator("question")
    @classmethod
    def _question_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("question must not be empty")
        return value.strip()


class CitedSpan(BaseModel):
    """A passage of a source the answer cites: offsets into that source's `text`."""

    number: int = Field(..., description="The source's number in `sources`.")
    start_char: int
    end_char: int


class ConversationTurn(QueryResponse):
    question: str = Field(..., description="As the user asked it.")
    standalone_query: str = Field(..., description="The follow-up condensed with the conversation: what was searched.")
    created_at: datetime
    cited: list[CitedSpan] = Field(..., description="The sentences of the sources the answer cites.")


class ConversationSummary(BaseModel):
    conversation_id: str
    user: str
    title: str
    created_at: datetime
    updated_at: datetime


class ConversationOut(ConversationSummary):
    turns: list[ConversationTurn]


class ConversationList(BaseModel):
    conversations: list[ConversationSummary] = Field(..., description="Most recently active first.")


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
