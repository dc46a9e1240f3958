"""Every job of the code location, in one place: what each run materializes or executes, and its tags.

Jobs that write Milvus carry `INDEX_WRITER_TAG`, which `infra/dagster.yaml` uses to limit concurrent index
writers; the jobs that keep the index true to the folder also carry `INDEX_RETRY_TAGS`, so that Dagster runs
them again when they fail or never start (`run_retries` in dagster.yaml). The sensors and schedules that
launch these jobs live in `sensors.py` and `schedules.py`.
"""

from dagster import AssetSelection, define_asset_job, job
from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

from rag_assets.assets.indexing import INDEX_ASSETS, INDEX_WRITER_TAG
from rag_assets.assets.model_update import EXPERIMENT, PROMOTE, UPDATE_HOOKS
from rag_assets.experiments import experiment_grid
from rag_assets.maintenance import remove_documents
from rag_assets.partitions import documents_partitions
from rag_core.promotion import IMPROVEMENT, TOLERANCE

# Two more tries from the failed steps (earlier steps' staged outputs are reused); after that the documents
# sensor's backoff takes over (sensors.py).
INDEX_RETRY_TAGS = {"dagster/max_retries": "2", "dagster/retry_strategy": "FROM_FAILURE"}
EVALUATE_CANDIDATE = {"ops": {"retrieval_eval_report": {"config": {"target": "candidate"}}}}

index_documents_job = define_asset_job(
    "index_documents_job",
    selection=INDEX_ASSETS,
    partitions_def=documents_partitions,
    tags={**INDEX_WRITER_TAG, **INDEX_RETRY_TAGS},
    description="Parse → chunk → embed → upsert into Milvus for the selected document partitions.",
)


@job(
    tags={**INDEX_WRITER_TAG, **INDEX_RETRY_TAGS}, description="Deletes the vectors of source files that were deleted."
)
def remove_documents_job() -> None:
    remove_documents()


reconcile_job = define_asset_job(
    "reconcile_job",
    selection=AssetSelection.assets("index_reconciliation"),
    tags=INDEX_WRITER_TAG,
    description="Compare the source folder, the partitions and Milvus; repair drift.",
)

search_index_job = define_asset_job(
    "search_index_job",
    selection=AssetSelection.assets("search_index"),
    description="Snapshot the served build for the in-memory search engine (after `rag index`).",
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
    config=EVALUATE_CANDIDATE,
    tags=INDEX_WRITER_TAG,
    description="Evaluate the waiting candidate build next to the served one; move the alias if it passes.",
)

finetune_and_promote_job = define_asset_job(
    "finetune_and_promote_job",
    selection=AssetSelection.assets(
        "finetuned_embedding_model", "candidate_index", "retrieval_eval_report", "promoted_index"
    ),
    config=EVALUATE_CANDIDATE,
    tags={**INDEX_WRITER_TAG, "rag/experiment": "finetune"},
    description="Fine-tune, build the candidate collection, evaluate it, promote it only past the gate.",
)

# A model update (rag_assets/assets/model_update.py): the same fine-tune → candidate → evaluation as above,
# ended by the action RAG_AUTO_UPDATE_ACTION names. A candidate promoted at once must beat the served build
# offline (the improvement rule); one that goes to an A/B test must only not be worse, and users decide.
UPDATE_STEPS = ("finetuned_embedding_model", "candidate_index", "retrieval_eval_report")


def _update_job(action: str, last_step: str, rule: str, description: str) -> UnresolvedAssetJobDefinition:
    return define_asset_job(
        f"model_update_{action}_job",
        selection=AssetSelection.assets(*UPDATE_STEPS, last_step),
        config={"ops": {"retrieval_eval_report": {"config": {"target": "candidate", "rule": rule}}}},
        tags={**INDEX_WRITER_TAG, "rag/experiment": "finetune"},
        hooks=UPDATE_HOOKS,
        description=description,
    )


UPDATE_JOBS = {
    PROMOTE: _update_job(
        PROMOTE, "promoted_index", IMPROVEMENT, "Model update: fine-tune, build, evaluate; promote a candidate "
        "that beats the served build (started by model_update_sensor / model_update_schedule).",
    ),
    EXPERIMENT: _update_job(
        EXPERIMENT, "update_experiment", TOLERANCE, "Model update: fine-tune, build, evaluate; start an A/B test "
        "between the served build and a candidate within the gate's margin (started by model_update_sensor).",
    ),
}

experiment_decision_job = define_asset_job(
    "experiment_decision_job",
    selection=AssetSelection.assets("experiment_report"),
    description="An A/B experiment's report and verdict; a winning build is promoted past the offline gate.",
)

reranker_job = define_asset_job(
    "reranker_job",
    selection=AssetSelection.assets("reranker_model"),
    tags={"rag/experiment": "reranker"},
    description="Train the cross-encoder reranker, register it as `rag-reranker` in MLflow and judge it on the "
    "served build (`auto` serving reranks where it passes); with `judge`, judge one trained before instead "
    "(started by rerank_after_promotion_sensor).",
)


@job(
    tags={"rag/experiment": "grid"},
    description="models × chunk sizes × modes, one MLflow run each (experiment `retrieval-grid`).",
)
def experiment_grid_job() -> None:
    experiment_grid()


JOBS = [
    index_documents_job,
    remove_documents_job,
    reconcile_job,
    evaluation_job,
    promote_job,
    candidate_job,
    finetune_and_promote_job,
    reranker_job,
    experiment_grid_job,
    search_index_job,
    *UPDATE_JOBS.values(),
    experiment_decision_job,
]
