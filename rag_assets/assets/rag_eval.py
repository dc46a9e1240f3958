"""ragas on generated answers: the served query path answers the dataset's questions, and ragas scores
the answers and their contexts. Logged to MLflow (experiment `rag`)."""

import contextlib
import json
import time
from pathlib import Path

from dagster import AssetExecutionContext, Failure, MaterializeResult, MetadataValue, asset

from rag_assets.assets.indexing import milvus_collection
from rag_assets.reporting import metric_name
from rag_assets.resources import EmbedderResource, EvaluationResource, MilvusResource, TrackingResource
from rag_core.models import BUNDLED_MODEL
from rag_core.promotion import spec_of


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
    from rag_core.answer_eval import RagSample, evaluate_answers
    from rag_core.evaluation import restrict_to_documents
    from rag_core.query import Query, QueryEngine
    from rag_core.retrieval import SearchFilter

    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        store = stack.enter_context(milvus.store())
        served = store.alias_target()
        if served is None:
            raise Failure(f"alias {milvus.alias} serves nothing yet — build the index first (`rag index`)")
        spec = spec_of(store.collection_properties(served), BUNDLED_MODEL)
        searcher = milvus.searcher(store, served)
        if milvus.connection().engine == "memory":
            stack.close()  # the in-memory engine needs no Milvus: let other steps write meanwhile
        model = embedder.load(spec.model, spec.backend)
        dataset = restrict_to_documents(evaluation.dataset(), searcher.doc_ids())
        query_ids = sorted(dataset.queries)[: evaluation.rag_queries]
        if not query_ids:
            raise Failure(f"no query of {dataset.name} has a relevant document in {served} — set RAG_EVAL_DATASET_DIR")
        # the served query path: its fusion, answerer, top_k and mode
        engine = QueryEngine(
            searcher, lambda text: model.encode([text])[0].tolist(), evaluation.fusion(), evaluation.llm()
        )
        vectors = model.encode([dataset.queries[q] for q in query_ids])
        samples = []
        for query_id, vector in zip(query_ids, vectors, strict=True):
            question = dataset.queries[query_id]
            chunks = engine.retrieve(Query(question, search_filter=SearchFilter(evaluation.tenant)), vector.tolist())
            answer = engine.answer(question, chunks)
            samples.append(
                RagSample(
                    query_id=query_id,
                    question=question,
                    retrieved_ids=list(dict.fromkeys(chunk.doc_id for chunk in chunks)),
                    relevant_ids=sorted(dataset.qrels[query_id]),
                    contexts=[chunk.text for chunk in chunks],
                    answer=answer.text,
                    reference=dataset.answers.get(query_id),
                )
            )
    result = evaluate_answers(
        samples,
        judge_model=evaluation.judge_model or None,
        judge_api_base=evaluation.judge_api_base,
        judge_api_key=evaluation.judge_api_key,
        embedding_model_dir=model.model_dir,
    )
    folder = Path(evaluation.reports_dir) / f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-rag-{served}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "rag_samples.jsonl").write_text(
        "\n".join(json.dumps(row, default=str) for row in result.per_sample) + "\n"
    )
    table = "\n".join(f"| {metric} | {value:.4f} |" for metric, value in result.means.items())
    skipped = "\n".join(f"- **{metric}**: {reason}" for metric, reason in result.skipped.items())
    markdown = f"# ragas on {served}\n\n| metric | mean |\n|---|---|\n{table}\n\n## skipped\n{skipped or 'none'}\n"
    (folder / "rag_report.md").write_text(markdown)
    tracker = tracking.tracker()
    with tracker.run("rag", f"ragas:{served[-24:]}") as run:
        mlflow = tracker.mlflow()
        mlflow.log_params(
            {
                "collection": served,
                "model": model.version,
                "llm_model": evaluation.llm_model,
                "judge_model": evaluation.judge_model or "none",
                "questions": len(samples),
                "dataset": dataset.name,
            }
        )
        mlflow.log_metrics({metric_name(metric): value for metric, value in result.means.items()})
        mlflow.log_artifacts(str(folder), artifact_path="report")
    return MaterializeResult(
        metadata={
            "collection": served,
            "questions": len(samples),
            **{metric_name(metric): round(value, 4) for metric, value in result.means.items()},
            "skipped_metrics": MetadataValue.json(result.skipped),
            "report": MetadataValue.md(markdown),
            "mlflow_run": run.info.run_id,
            "seconds": round(time.perf_counter() - started, 3),
        }
    )
