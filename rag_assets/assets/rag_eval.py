"""ragas on generated answers: the served query path answers the dataset's questions, and ragas scores
the answers and their contexts. Logged to MLflow (experiment `rag`)."""

import time

from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset

from rag_assets.assets.indexing import milvus_collection
from rag_assets.reporting import DagsterOrigin, log_rag_run, metric_names, mlflow_links
from rag_assets.resources import EmbedderResource, EvaluationResource, MilvusResource, TrackingResource
from rag_core.evaluation import judged_dataset


@asset(group_name="evaluation", deps=[milvus_collection], kinds={"mlflow"})
def rag_eval_report(
    context: AssetExecutionContext,
    milvus: MilvusResource,
    embedder: EmbedderResource,
    evaluation: EvaluationResource,
    tracking: TrackingResource,
) -> MaterializeResult:
    """ragas over answers generated from the served index: ID-based context precision/recall against the
    qrels always, reference-answer metrics where the dataset has answers, faithfulness and response
    relevancy when a judge model is configured. Logged to MLflow (experiment `rag`)."""
    from rag_core.answer_eval import answer_samples, evaluate_answers, write_answer_report

    started = time.perf_counter()
    with milvus.searchable(lambda store: {"served": milvus.served_collection(store)}) as builds:
        served = builds["served"]
        model = embedder.load_build(served.properties)
        dataset = judged_dataset(
            evaluation.dataset(), served.searcher.doc_ids(), served.collection, evaluation.rag_queries
        )
        llm, fusion = evaluation.llm(), evaluation.fusion()
        samples = answer_samples(served.searcher, model, fusion, llm, dataset, evaluation.tenant)
    result = evaluate_answers(
        samples, evaluation.judge_model or None, evaluation.judge_api_base, evaluation.judge_api_key, model.model_dir
    )
    folder = evaluation.report_folder(f"rag-{served.collection}")
    markdown = write_answer_report(result, folder, served.collection)
    tracker, origin = tracking.tracker(), DagsterOrigin.of(context, tracking.dagster_ui_url)
    run = log_rag_run(tracker, served.collection, model.version, evaluation, dataset.name, result, folder, origin)
    return MaterializeResult(
        metadata={
            "collection": served.collection,
            "questions": len(samples),
            **metric_names({metric: round(value, 4) for metric, value in result.means.items()}),
            "skipped_metrics": MetadataValue.json(result.skipped),
            "report": MetadataValue.md(markdown),
            "mlflow_run": run[1],
            **mlflow_links(tracker, {"mlflow_run_url": run}),
            "seconds": round(time.perf_counter() - started, 3),
        }
    )
