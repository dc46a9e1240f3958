from dagster import AssetSelection, DefaultScheduleStatus, ScheduleDefinition, define_asset_job

from rag_assets.assets.indexing import INDEX_WRITER_TAG

search_index_job = define_asset_job(
    "search_index_job",
    selection=AssetSelection.assets("search_index"),
    description="Snapshot the served build for the in-memory search engine (after `rag index`).",
)
reconcile_job = define_asset_job(
    "reconcile_job",
    selection=AssetSelection.assets("index_reconciliation"),
    tags=INDEX_WRITER_TAG,
    description="Compare the source folder, the partitions and Milvus; repair drift.",
)

evaluation_job = define_asset_job(
    "evaluation_job",
    selection=AssetSelection.assets("retrieval_eval_report", "rag_eval_report"),
    description="Retrieval metrics (with the quality gate) and ragas on the served index, logged to MLflow.",
)

candidate_job = define_asset_job(
    "candidate_job",
    selection=AssetSelection.assets("candidate_index"),
    tags=INDEX_WRITER_TAG,
    description="Build a candidate collection (new model and/or chunking) next to the served one.",
)

promote_job = define_asset_job(
    "promote_job",
    selection=AssetSelection.assets("retrieval_eval_report", "promoted_index"),
    config={"ops": {"retrieval_eval_report": {"config": {"target": "candidate"}}}},
    tags=INDEX_WRITER_TAG,
    description="Evaluate the waiting candidate build next to the served one; move the alias if it passes.",
)

finetune_and_promote_job = define_asset_job(
    "finetune_and_promote_job",
    selection=AssetSelection.assets(
        "finetuned_embedding_model", "candidate_index", "retrieval_eval_report", "promoted_index"
    ),
    config={"ops": {"retrieval_eval_report": {"config": {"target": "candidate"}}}},
    tags={**INDEX_WRITER_TAG, "rag/experiment": "finetune"},
    description="Fine-tune, build the candidate collection, evaluate it, promote it only past the gate.",
)

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
