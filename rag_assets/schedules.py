from dagster import AssetSelection, DefaultScheduleStatus, ScheduleDefinition, define_asset_job

from rag_assets.assets.indexing import INDEX_WRITER_TAG

reconcile_job = define_asset_job(
    "reconcile_job",
    selection=AssetSelection.assets("index_reconciliation"),
    tags=INDEX_WRITER_TAG,
    description="Compare the source folder, the partitions and Milvus; repair drift.",
)

nightly_reconcile = ScheduleDefinition(
    name="nightly_reconcile",
    job=reconcile_job,
    cron_schedule="0 3 * * *",
    default_status=DefaultScheduleStatus.RUNNING,
)
