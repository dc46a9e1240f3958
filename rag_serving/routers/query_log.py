"""GET /v1/logs: the caller's query log (question, chunks, per-stage latency, model, index version and
feedback), newest first, for the console's logs page."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query

from rag_core.querylog import LoggedQuery, QueryLogFilter
from rag_serving.deps import Caller, KeyFirstRoute, caller, get_state
from rag_serving.schemas import MAX_NAME_CHARS, TEXT_PATTERN, LoggedFeedbackOut, LogItem, LogPage, error_responses
from rag_serving.state import ServingState

router = APIRouter(prefix="/v1/logs", tags=["logs"], route_class=KeyFirstRoute, responses=error_responses(401, 429))
MAX_PAGE = 200
Moment = Annotated[datetime | None, Query(description="ISO 8601; without a zone it is UTC.")]
Text = Annotated[str, Query(max_length=MAX_NAME_CHARS, pattern=TEXT_PATTERN, description="Part of the question.")]


@router.get("", responses=error_responses(422, 503))
def query_log(
    who: Annotated[Caller, Depends(caller)],
    state: Annotated[ServingState, Depends(get_state)],
    since: Moment = None,
    until: Moment = None,
    degraded: Annotated[bool | None, Query(description="Only degraded (true) or only full (false) answers.")] = None,
    rated: Annotated[bool | None, Query(description="Only queries with (true) or without (false) feedback.")] = None,
    text: Text = "",
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
) -> LogPage:
    """The caller's tenant's queries from `since` (inclusive) to `until` (exclusive), newest first."""
    where = QueryLogFilter(_utc(since), _utc(until), degraded, rated, text.strip())
    total, rows = state.db.query_log(who.tenant, where, offset, limit)
    return LogPage(total=total, offset=offset, limit=limit, queries=[_item(row, state) for row in rows])


def _utc(moment: datetime | None) -> datetime | None:
    """The log stores UTC; SQLite compares timestamps as text, so a bound must be UTC too."""
    if moment is None:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _trace_url(row: LoggedQuery, state: ServingState) -> str | None:
    """The trace's page in the MLflow UI; none while tracing is off or not warmed up (its experiment unknown)."""
    if row.trace_id is None or state.tracer is None or not state.tracer.ready.is_set():
        return None
    return state.tracer.url(row.trace_id)


def _item(row: LoggedQuery, state: ServingState) -> LogItem:
    return LogItem(
        query_id=row.query_id,
        created_at=row.created_at,
        question=row.question,
        mode=row.mode,
        top_k=row.top_k,
        chunk_ids=row.chunk_ids,
        timings_ms=row.timings_ms,
        model=row.model,
        index_version=row.index_version,
        degraded=row.degraded,
        cached=row.cached,
        feedback=[
            LoggedFeedbackOut(
                rating=given.rating, is_relevant=given.is_relevant, comment=given.comment, created_at=given.created_at
            )
            for given in row.feedback
        ],
        trace_url=_trace_url(row, state),
    )
