"""Every job of the code location, in one place: what each run materializes or executes, and its tags.

Jobs that write Milvus carry `INDEX_WRITER_TAG`, which `infra/dagster.yaml` uses to limit concurrent index
writers; the jobs that keep the index true to the folder also carry `INDEX_RETRY_TAGS`, so that Dagster runs
them again when they fail or never start (`run_retries` in dagster.yaml). The sensors and schedules that
launch these jobs live in `sensors.py` and `schedules.py`.
"""

from dagster import AssetSelection, define_asset_job, job

from rag_assets.assets.indexing import INDEX_ASSETS, INDEX_WRITER_TAG
from rag_assets.experiments import experiment_grid
from rag_assets.maintenance import remove_documents
from rag_assets.partitions import documents_partitions

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

reranker_job = define_asset_job(
    "reranker_job",
    selection=AssetSelection.assets("reranker_model"),
    tags={"rag/experiment": "reranker"},
    description="Train the cross-encoder reranker and register it as `rag-reranker` in MLflow (serving uses it "
    "only when RAG_RERANK_MODEL names it).",
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
]
