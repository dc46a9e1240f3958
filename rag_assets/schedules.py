"""The schedules: a nightly reconcile and a weekly evaluation over every judged query."""

from dagster import DefaultScheduleStatus, ScheduleDefinition

from rag_assets.jobs import evaluation_job, reconcile_job

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
