"""The schedules: a nightly reconcile, a weekly evaluation over every judged query, and the weekly model update
(RAG_AUTO_UPDATE_SCHEDULE)."""

from dagster import (
    DefaultScheduleStatus,
    RunRequest,
    ScheduleDefinition,
    ScheduleEvaluationContext,
    SkipReason,
    schedule,
)

from rag_assets.assets.model_update import ModelUpdateResource, gained_pairs
from rag_assets.jobs import UPDATE_JOBS, evaluation_job, reconcile_job
from rag_assets.resources import EvaluationResource
from rag_assets.sensors import update_blocked, update_request
from rag_core.settings import Settings

nightly_reconcile = ScheduleDefinition(
    name="nightly_reconcile",
    job=reconcile_job,
    cron_schedule="0 3 * * *",
    default_status=DefaultScheduleStatus.RUNNING,
)

weekly_full_eval = ScheduleDefinition(
    name="weekly_full_eval",
    job=evaluation_job,
    cron_schedule="0 4 * * 0",
    run_config={"ops": {"retrieval_eval_report": {"config": {"target": "served", "max_queries": 0}}}},
    default_status=DefaultScheduleStatus.RUNNING,
)


def model_update_schedule(settings: Settings) -> list[ScheduleDefinition]:
    """The weekly model update, for the job RAG_AUTO_UPDATE_ACTION names; none when RAG_AUTO_UPDATE_SCHEDULE
    is empty. A week without a single new training pair is skipped: the fine-tune would learn nothing new."""
    if not settings.auto_update_schedule:
        return []

    @schedule(
        name="model_update_schedule",
        cron_schedule=settings.auto_update_schedule,
        job=UPDATE_JOBS[settings.auto_update_action],
        default_status=DefaultScheduleStatus.RUNNING,
    )
    def weekly_model_update(
        context: ScheduleEvaluationContext, model_update: ModelUpdateResource, evaluation: EvaluationResource
    ) -> RunRequest | SkipReason:
        if blocked := update_blocked(context.instance, model_update, evaluation):
            return SkipReason(blocked)
        gained = gained_pairs(context.instance, evaluation, model_update.synthetic_questions)
        if not gained.total:
            return SkipReason(f"{gained.describe()}: nothing new to learn from")
        when = context.scheduled_execution_time  # None only when evaluated by hand: then always a new run
        return update_request(model_update, "schedule", gained, f"schedule:{when:%Y%m%dT%H%M}" if when else None)

    return [weekly_model_update]
