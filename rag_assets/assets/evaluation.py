"""Quality, measured and enforced: the retrieval report on the live index (with the blocking gate), the
promotion that moves the alias only past the gate, and the ragas report on generated answers.

`retrieval_eval_report` evaluates the build waiting for promotion (a candidate collection) next to the
served one, or the served one alone after an index change. Its blocking check fails when nDCG@10 falls
more than the configured margin below the promoted index, so `promoted_index` never runs on a worse build.
"""

import contextlib
import json
import time
from pathlib import Path

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    Config,
    Failure,
    MaterializeResult,
    MetadataValue,
    asset,
)
from pydantic import Field

from rag_assets.assets.indexing import INDEX_WRITER_TAG, milvus_collection
from rag_assets.resources import (
    CatalogResource,
    EmbedderResource,
    EvaluationResource,
    MilvusResource,
    TrackingResource,
)
from rag_core.build_record import BuildRecord
from rag_core.catalog import INDEXED
from rag_core.evaluation import RetrievalEvaluation, evaluate_collection, write_report
from rag_core.indexing import RowCheck, check_rows
from rag_core.models import BUNDLED_MODEL
from rag_core.promotion import (
    CANDIDATE,
    gate,
    promote,
    recorded_ndcg,
    reject,
    spec_of,
)
from rag_core.search.engines import Searcher
from rag_core.store import MilvusStore
from rag_core.tracking import Tracker

GATE_CHECK = "ndcg_within_margin_of_promoted"
ROWS_CHECK = "index_rows_match_chunks"


class RetrievalEvalConfig(Config):
    target: str = Field(
        "served",
        description="`served`, `candidate` (the newest build waiting for promotion) or a collection name.",
    )
    max_queries: int = Field(-1, ge=-1, description="-1 = RAG_EVAL_MAX_QUERIES; 0 = every judged query.")


def waiting_candidate(store: MilvusStore) -> str | None:
    """The newest collection built for promotion and not yet judged."""
    candidates = []
    for name in store.list_collections():
        record = store.record(name)
        if record.status == CANDIDATE:
            candidates.append((record.created_at, name))
    return max(candidates)[1] if candidates else None


def _evaluate(
    searcher: Searcher,
    properties: dict[str, str],
    collection: str,
    embedder: EmbedderResource,
    evaluation: EvaluationResource,
    max_queries: int,
) -> RetrievalEvaluation:
    spec = spec_of(properties, BUNDLED_MODEL)
    model = embedder.load(spec.model, spec.backend)  # queries embed as the build's chunks were
    return evaluate_collection(
        searcher,
        collection,
        model,
        evaluation.dataset(),
        evaluation.modes,
        evaluation.fusion(),
        evaluation.tenant,
        evaluation.max_queries if max_queries < 0 else max_queries,
    )


def metric_name(metric: str) -> str:
    return metric.replace("@", "_at_")


def log_retrieval_runs(
    tracker: Tracker,
    evaluations: dict[str, RetrievalEvaluation],
    records: dict[str, BuildRecord],
    evaluation: EvaluationResource,
    report: Path,
    experiment: str = "retrieval",
) -> list[str]:
    """One MLflow run per (build, mode), so MLflow's compare view lines them up; the report rides along."""
    run_ids = []
    for role, result in evaluations.items():
        built = records[result.collection]
        for mode, scores in result.modes.items():
            with tracker.run(experiment, f"{role}:{mode}:{result.collection[-24:]}", {"role": role}) as run:
                mlflow = tracker.mlflow()
                mlflow.log_params(
                    {
                        "collection": result.collection,
                        "model": built.embedding_version,
                        "model_uri": built.model_reference,
                        "chunking": built.chunking,
                        "mode": mode,
                        "fusion": str(evaluation.fusion()),
                        "dataset": result.dataset,
                        "queries": result.queries,
                    }
                )
                mlflow.log_metrics({metric_name(metric): value for metric, value in scores.means.items()})
                mlflow.log_artifacts(str(report.parent), artifact_path="report")
                run_ids.append(run.info.run_id)
    return run_ids


def _row_check(store: MilvusStore, collection: str, catalog: CatalogResource) -> RowCheck:
    """Rows per source in Milvus against the row count a one-pass build recorded, else against the chunk
    counts the catalog recorded for this collection; a collection neither vouches for fails."""
    catalog_chunks = {
        key: entry.chunks
        for key, entry in catalog.get().entries().items()
        if entry.status == INDEXED and entry.collection == collection
    }
    return check_rows(store.rows_by_source(collection), catalog_chunks, store.record(collection).expected_rows)


@asset(
    group_name="evaluation",
    deps=[milvus_collection, "candidate_index"],
    kinds={"mlflow"},
    check_specs=[
        AssetCheckSpec(
            GATE_CHECK,
            asset="retrieval_eval_report",
            blocking=True,
            description="nDCG@10 of the evaluated build is not more than the margin below the promoted index.",
        ),
        AssetCheckSpec(
            ROWS_CHECK,
            asset="retrieval_eval_report",
            description="The evaluated collection holds exactly the chunks the pipeline produced for it.",
        ),
    ],
)
def retrieval_eval_report(
    context: AssetExecutionContext,
    config: RetrievalEvalConfig,
    milvus: MilvusResource,
    embedder: EmbedderResource,
    evaluation: EvaluationResource,
    tracking: TrackingResource,
    catalog: CatalogResource,
) -> MaterializeResult:
    """The labelled queries against the live index in each mode (bm25, dense, hybrid): nDCG@10,
    recall@10/100, MRR@10, MAP — a markdown report with plots, logged to MLflow (experiment `retrieval`)."""
    started = time.perf_counter()
    with contextlib.ExitStack() as held:
        store = held.enter_context(milvus.store())
        served = store.alias_target()
        if served is None:
            raise Failure(f"alias {milvus.alias} serves nothing yet — build the index first (`rag index`)")
        if config.target == "candidate":
            target = waiting_candidate(store)
            if target is None:
                raise Failure("no candidate build is waiting — build one (`rag promote --model …`, candidate_index)")
        else:
            target = served if config.target == "served" else config.target
        if not store.has_collection(target):
            raise Failure(f"collection {target} does not exist — `rag builds` lists the builds")
        role = "candidate" if target != served else "served"
        builds = {name: (milvus.searcher(store, name), store.collection_properties(name)) for name in {target, served}}
        if milvus.connection().engine == "memory":
            # The in-memory engine evaluates from the search log: Milvus (a Lite file only one process
            # may open) is let go meanwhile, so other steps and the API keep writing and serving.
            held.close()
        evaluations = {role: _evaluate(*builds[target], target, embedder, evaluation, config.max_queries)}
        if target != served:
            evaluations["served"] = _evaluate(*builds[served], served, embedder, evaluation, config.max_queries)
    with milvus.store() as store:
        if target != served:
            baseline = evaluations["served"].modes[evaluation.gate_mode].means["ndcg@10"]
        else:
            baseline = recorded_ndcg(store, served)
        evaluated = evaluations["candidate" if target != served else "served"]
        score = evaluated.modes[evaluation.gate_mode].means["ndcg@10"]
        decision = gate(score, baseline, evaluation.gate_margin)
        if not decision.passed and target != served:
            reject(store, target, decision.reason)
        if target == served and baseline is None:  # the first measurement becomes the baseline to hold
            store.update_record(served, eval_ndcg_at_10=score)
        rows = _row_check(store, target, catalog)
        records = {name: store.record(name) for name in {target, served}}
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    report = write_report(
        evaluations, Path(evaluation.reports_dir) / f"{stamp}-{target}", f"Retrieval evaluation of {target}"
    )
    run_ids = log_retrieval_runs(tracking.tracker(), evaluations, records, evaluation, report)
    (context.log.info if decision.passed else context.log.error)(f"quality gate: {decision.reason}")
    per_mode = {
        f"{role}_{mode}_{metric_name(metric)}": value
        for role, result in evaluations.items()
        for mode, scores in result.modes.items()
        for metric, value in scores.means.items()
    }
    return MaterializeResult(
        metadata={
            "evaluated_collection": target,
            "served_collection": served,
            "role": "candidate" if target != served else "served",
            "gate_mode": evaluation.gate_mode,
            "ndcg_at_10": score,
            "baseline_ndcg_at_10": baseline if baseline is not None else "none",
            "gate_passed": decision.passed,
            "gate_reason": decision.reason,
            "queries": evaluated.queries,
            "dropped_queries": evaluated.dropped_queries,
            "report": MetadataValue.md(report.read_text()),
            "report_path": MetadataValue.path(str(report)),
            "mlflow_runs": MetadataValue.json(run_ids),
            "seconds": round(time.perf_counter() - started, 3),
            **per_mode,
        },
        check_results=[
            AssetCheckResult(
                check_name=GATE_CHECK,
                passed=decision.passed,
                severity=AssetCheckSeverity.ERROR,
                metadata={
                    "ndcg_at_10": score,
                    "baseline_ndcg_at_10": baseline if baseline is not None else "none",
                    "margin": evaluation.gate_margin,
                    "reason": decision.reason,
                },
            ),
            AssetCheckResult(
                check_name=ROWS_CHECK,
                passed=rows.passed,
                severity=AssetCheckSeverity.ERROR,
                metadata={
                    "rows": rows.rows,
                    "expected_rows": rows.expected_rows,
                    "reason": rows.reason,
                    "mismatched_sources": MetadataValue.json(rows.mismatched_sources[:50]),
                    "sources_not_in_catalog": MetadataValue.json(rows.sources_not_in_catalog[:50]),
                },
            ),
        ],
    )


def latest_metadata(context: AssetExecutionContext, asset_name: str) -> dict[str, object]:
    event = context.instance.get_latest_materialization_event(AssetKey(asset_name))
    if event is None or event.asset_materialization is None:
        return {}
    return {key: value.value for key, value in event.asset_materialization.metadata.items()}


@asset(group_name="evaluation", deps=[retrieval_eval_report], kinds={"milvus"}, op_tags=INDEX_WRITER_TAG)
def promoted_index(
    context: AssetExecutionContext, milvus: MilvusResource, catalog: CatalogResource
) -> MaterializeResult:
    """Moves the serving alias to the evaluated build — only after its quality gate passed. The build it
    replaces is kept, so `rag rollback` restores it in one command."""
    report = latest_metadata(context, "retrieval_eval_report")
    if not report:
        raise Failure("no retrieval_eval_report yet — materialize it first (`rag promote` does both)")
    target = str(report["evaluated_collection"])
    if not report.get("gate_passed"):
        raise Failure(f"{target} did not pass the quality gate ({report.get('gate_reason')}); the alias stays")
    with milvus.store() as store:
        if not store.has_collection(target):
            raise Failure(f"the evaluated build {target} no longer exists")
        previous = promote(store, target, float(report["ndcg_at_10"]))
        served = store.alias_target()
        record = store.record(target)
        if previous != target and record.expected_rows is not None:
            # A one-pass build: the catalog now tracks its rows, and incremental runs keep it current.
            rows = dict(store.rows_by_source(target))
            catalog.get().retarget(target, record.embedding_version, rows)
            store.update_record(target, expected_rows=None)
    moved = previous != target
    context.log.info(f"alias {milvus.alias} → {served}" + (f" (was {previous})" if moved else " (unchanged)"))
    return MaterializeResult(
        metadata={
            "served_collection": served,
            "previous_collection": previous or "none",
            "alias_moved": moved,
            "ndcg_at_10": report["ndcg_at_10"],
            "rollback": "rag rollback" if moved and previous else "nothing to roll back to",
        }
    )


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


EVALUATION_ASSETS = [retrieval_eval_report, promoted_index, rag_eval_report]
