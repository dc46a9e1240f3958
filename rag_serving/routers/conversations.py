"""Conversations: multi-turn chat with a history per user of the caller's tenant (rag_core.conversations).
Each follow-up is condensed into a standalone query, retrieved and answered like POST /v1/query, logged in the
query log (its `query_id` takes POST /v1/feedback), and stored with the sentences its answer cites."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, status
from fastapi import Path as PathParam

from rag_core.conversations import Conversation, ConversationNotFound, Turn, cited_spans, condense
from rag_serving.deps import Caller, KeyFirstRoute, caller, get_state, index_snapshot
from rag_serving.routers.query import answered
from rag_serving.schemas import (
    USER_PATTERN,
    CitedSpan,
    ConversationCreate,
    ConversationList,
    ConversationMessage,
    ConversationOut,
    ConversationSummary,
    ConversationTurn,
    QueryRequest,
    error_responses,
)
from rag_serving.service import Timings, engine_for, retrieve
from rag_serving.state import IndexSnapshot, ServingState

router = APIRouter(
    prefix="/v1/conversations",
    tags=["conversations"],
    route_class=KeyFirstRoute,
    responses=error_responses(401, 422, 429),
)
CallerDep = Annotated[Caller, Depends(caller)]
StateDep = Annotated[ServingState, Depends(get_state)]
SnapshotDep = Annotated[IndexSnapshot, Depends(index_snapshot)]
ConvId = Annotated[str, PathParam(min_length=1, max_length=36, pattern=r"^[0-9a-f-]+$")]
User = Annotated[
    str,
    Query(max_length=128, pattern=USER_PATTERN, description="Whose history (default: the API key's id)."),
]
MAX_LISTED = 100


def _user(who: Caller, user: str) -> str:
    return user or who.key_id or "anonymous"


def _summary(conversation: Conversation) -> ConversationSummary:
    return ConversationSummary(
        conversation_id=conversation.conversation_id,
        user=conversation.user,
        title=conversation.title,
        created_at=conversation.created_at,
        updated_at=conversation.updated_at,
    )


def _owned(state: ServingState, conversation_id: str, who: Caller, user: str) -> Conversation:
    try:
        return state.conversations.get(conversation_id, who.tenant, _user(who, user))
    except ConversationNotFound as error:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, f"no conversation {conversation_id} for this tenant and user"
        ) from error


@router.post("", status_code=status.HTTP_201_CREATED)
def start_conversation(body: ConversationCreate, who: CallerDep, state: StateDep, user: User = "") -> ConversationOut:
    """A new, empty conversation of the user (in the caller's tenant)."""
    conversation = state.conversations.create(who.tenant, _user(who, user), body.title)
    return ConversationOut(**_summary(conversation).model_dump(), turns=[])


@router.get("")
def list_conversations(who: CallerDep, state: StateDep, user: User = "") -> ConversationList:
    """The user's conversations, most recently active first."""
    found = state.conversations.list(who.tenant, _user(who, user), MAX_LISTED)
    return ConversationList(conversations=[_summary(conversation) for conversation in found])


@router.get("/{conversation_id}", responses=error_responses(404))
def get_conversation(conversation_id: ConvId, who: CallerDep, state: StateDep, user: User = "") -> ConversationOut:
    """The conversation with every turn: questions, standalone queries, answers, sources and cited spans."""
    conversation = _owned(state, conversation_id, who, user)
    return ConversationOut(
        **_summary(conversation).model_dump(),
        turns=[ConversationTurn.model_validate(turn.answer) for turn in conversation.turns],
    )


@router.post("/{conversation_id}/messages", responses=error_responses(404, 503))
def ask(
    conversation_id: ConvId,
    message: ConversationMessage,
    who: CallerDep,
    state: StateDep,
    snapshot: SnapshotDep,
    user: User = "",
) -> ConversationTurn:
    """Ask in the conversation: the question is condensed with the earlier turns into a standalone query
    (through the answerer), which is retrieved and answered with citations."""
    limits = state.settings
    if message.top_k > limits.max_top_k or len(message.question) > limits.max_query_chars:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"top_k is at most {limits.max_top_k} (RAG_MAX_TOP_K) and a question at most {limits.max_query_chars} "
            "characters (RAG_MAX_QUERY_CHARS)",
        )
    conversation = _owned(state, conversation_id, who, user)
    standalone = condense(conversation.turns, message.question, state.llm)
    request = QueryRequest(query=standalone, top_k=message.top_k, mode=message.mode)
    timings = Timings()
    engine = engine_for(state, snapshot, timings, tenant=who.tenant)
    chunks, cached = retrieve(state, engine, request, who.tenant, snapshot)
    response = answered(request, who, state, snapshot, chunks, timings, cached, engine.answer(standalone, chunks))
    spans = cited_spans(response.answer, [chunk.text for chunk in chunks])
    turn = ConversationTurn(
        **response.model_dump(),
        question=message.question,
        standalone_query=standalone,
        created_at=datetime.now(UTC),
        cited=[
            CitedSpan(number=number, start_char=start, end_char=end)
            for number, found in sorted(spans.items())
            for start, end in found
        ],
    )
    state.conversations.add_turn(
        conversation,
        Turn(message.question, standalone, response.query_id, turn.model_dump(mode="json"), turn.created_at),
    )
    return turn
