"""POST /v1/feedback and GET /v1/feedback/analytics."""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException, status

from rag_serving.deps import Caller, KeyFirstRoute, caller, get_state
from rag_serving.experiments import observe_feedback
from rag_serving.schemas import FeedbackAnalytics, FeedbackCreated, FeedbackRequest, error_responses
from rag_serving.state import ServingState

router = APIRouter(
    prefix="/v1/feedback", tags=["feedback"], route_class=KeyFirstRoute, responses=error_responses(401, 429)
)


@router.post("", status_code=status.HTTP_201_CREATED, responses=error_responses(404, 413, 422))
def give_feedback(
    feedback: FeedbackRequest, who: Caller = Depends(caller), state: ServingState = Depends(get_state)
) -> FeedbackCreated:
    """A rating (1–5), a relevance judgement and/or a comment on an earlier query of the same tenant; `chunk_id`
    names the chunk the user clicked or found cited."""
    if feedback.rating is None and feedback.is_relevant is None and not feedback.comment.strip():
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "give a rating, is_relevant or a comment")
    if not state.db.query_exists(feedback.query_id, who.tenant):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no query {feedback.query_id} for this tenant")
    feedback_id = state.db.add_feedback(
        feedback.query_id, feedback.rating, feedback.is_relevant, feedback.comment, feedback.chunk_id
    )
    observe_feedback(state, feedback.query_id, feedback.rating, feedback.is_relevant)
    return FeedbackCreated(feedback_id=feedback_id, query_id=feedback.query_id)


@router.get("/analytics")
def feedback_analytics(who: Caller = Depends(caller), state: ServingState = Depends(get_state)) -> FeedbackAnalytics:
    """Feedback rate, mean rating, relevance rate and the worst-rated queries of the caller's tenant."""
    return FeedbackAnalytics(**state.db.analytics(tenant=who.tenant))
