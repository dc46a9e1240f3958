"""The retrieval report on the live index, and its two checks.

`retrieval_eval_report` evaluates the build waiting for promotion (a candidate collection) next to the
served one, or the served one alone after an index change, each beside its naive baseline (rag_core.baseline);
a build below the baseline in any mode is a warning naming the likely cause. Its blocking check fails when
nDCG@10 falls more than the configured margin below the promoted index, so `promoted_index` never runs on a
worse build.
"""

import contextlib
import time
from pathlib import Path

from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetExecutionContext,
    Config,
    Failure,
    MaterializeResult,
    MetadataValue,
    asset,
    asset_check,
)
from pydantic import Field

from rag_assets.assets.indexing import milvus_collection
from rag_assets.reporting import baseline_metrics, latest_metadata, log_retrieval_runs, metric_name
from rag_assets.resources import (
    CatalogResource,
    EmbedderResource,
    EvaluationResource,
    MilvusResource,
    TrackingResource,
)
from rag_core.baseline import shortfall
from rag_core.catalog import INDEXED
from rag_core.evaluation import RetrievalEvaluation, evaluate_collection, write_report
from rag_core.indexing import RowCheck, check_rows
from rag_core.models import BUNDLED_MODEL
from rag_core.promotion import GateDecision, gate, recorded_ndcg, reject, spec_of, waiting_candidate
from rag_core.search.engines import Searcher
from rag_core.store import MilvusStore

GATE_CHECK = "ndcg_within_margin_of_promoted"
ROWS_CHECK = "index_rows_match_chunks"


class RetrievalEvalConfig(Config):
    target: str = Field(
        "served",
        description="`served`, `candidate` (the newest build waiting for promotion) or a collection name.",
    )
    max_queries: int = Field(-1, ge=-1, description="-1 = RAG_EVAL_MAX_QUERIES; 0 = every judged query.")


def _target(store: MilvusStore, target: str, alias: str) -> tuple[str, str]:
    """(the collection to evaluate, the served collection) for a `RetrievalEvalConfig.target`."""
    served = store.alias_target()
    if served is None:
        raise Failure(f"alias {alias} serves nothing yet — build the index first (`rag index`)")
    if target == "candidate":
        candidate = waiting_candidate(store)
        if candidate is None:
            raise Failure("no candidate build is waiting — build one (`rag promote --model …`, candidate_index)")
        target = candidate
    elif target == "served":
        target = served
    if not store.has_collection(target):
        raise Failure(f"collection {target} does not exist — `rag builds` lists the builds")
    return target, served


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
        baseline_cache=embedder.cache(),
    )


def _judge(
    store: MilvusStore, evaluations: dict[str, RetrievalEvaluation], target: str, served: str, gate_mode: str,
    margin: float,
) -> GateDecision:
    """The gate against the served build measured in the same run (a candidate), or against the nDCG
    recorded at promotion (the served build after a reindex). A failing candidate is marked rejected; the
    first measurement of the served build becomes the baseline later evaluations hold."""
    score = evaluations["candidate" if target != served else "served"].modes[gate_mode].means["ndcg@10"]
    if target != served:
        baseline = evaluations["served"].modes[gate_mode].means["ndcg@10"]
    else:
        baseline = recorded_ndcg(store, served)
    decision = gate(score, baseline, margin)
    if not decision.passed and target != served:
        reject(store, target, decision.reason)
    if target == served and baseline is None:
        store.update_record(served, eval_ndcg_at_10=score)
    return decision


@asset(group_name="evaluation", deps=[milvus_collection, "candidate_index"], kinds={"mlflow"})
def retrieval_eval_report(
    context: AssetExecutionContext,
    config: RetrievalEvalConfig,
    milvus: MilvusResource,
    embedder: EmbedderResource,
    evaluation: EvaluationResource,
    tracking: TrackingResource,
) -> MaterializeResult:
    """The labelled queries against the live index in each mode (bm25, dense, hybrid): nDCG@10,
    recall@10/100, MRR@10, MAP — a markdown report with plots, logged to MLflow (experiment `retrieval`)."""
    started = time.perf_counter()
    with contextlib.ExitStack() as held:
        store = held.enter_context(milvus.store())
        target, served = _target(store, config.target, milvus.alias)
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
        decision = _judge(store, evaluations, target, served, evaluation.gate_mode, evaluation.gate_margin)
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
    per_mode |= {
        f"{role}_{key}": value
        for role, result in evaluations.items()
        for key, value in baseline_metrics(result).items()
    }
    shortfalls = {role: losing for role, result in evaluations.items() if (losing := shortfall(result))}
    for losing in shortfalls.values():
        context.log.warning(f"naive baseline: {losing.message}")
    return MaterializeResult(
        metadata={
            "evaluated_collection": target,
            "served_collection": served,
            "role": role,
            "gate_mode": evaluation.gate_mode,
            "ndcg_at_10": decision.candidate_ndcg,
            "baseline_ndcg_at_10": decision.baseline_ndcg if decision.baseline_ndcg is not None else "none",
            "gate_passed": decision.passed,
            "gate_reason": decision.reason,
            "below_naive_baseline": MetadataValue.json(
                {role: {"modes": losing.margins, "cause": losing.cause} for role, losing in shortfalls.items()}
            ),
            "naive_baseline_warning": " ".join(losing.message for losing in shortfalls.values()) or "none",
            "queries": evaluations[role].queries,
            "dropped_queries": evaluations[role].dropped_queries,
            "report": MetadataValue.md(report.read_text()),
            "report_path": MetadataValue.path(str(report)),
            "mlflow_runs": MetadataValue.json(run_ids),
            "seconds": round(time.perf_counter() - started, 3),
            **per_mode,
        }
    )


@asset_check(
    asset=retrieval_eval_report,
    name=GATE_CHECK,
    blocking=True,
    description="nDCG@10 of the evaluated build is not more than the margin below the promoted index.",
)
def ndcg_within_margin_of_promoted(
    context: AssetCheckExecutionContext, evaluation: EvaluationResource
) -> AssetCheckResult:
    """The gate the report decided (and acted on: a failing candidate is already rejected). Blocking, so
    `promoted_index` never runs in the same run after a failure. No report to judge is a failure."""
    report = latest_metadata(context.instance, "retrieval_eval_report")
    if "gate_passed" not in report:
        return AssetCheckResult(
            passed=False,
            severity=AssetCheckSeverity.ERROR,
            metadata={"reason": "retrieval_eval_report recorded no gate decision — materialize it first"},
        )
    return AssetCheckResult(
        passed=bool(report["gate_passed"]),
        severity=AssetCheckSeverity.ERROR,
        metadata={
            "ndcg_at_10": report["ndcg_at_10"],
            "baseline_ndcg_at_10": report["baseline_ndcg_at_10"],
            "margin": evaluation.gate_margin,
            "reason": report["gate_reason"],
            "margin_over_naive_ndcg_at_10": report.get(
                f"{report['role']}_margin_{evaluation.gate_mode}_ndcg_at_10", "none"
            ),
        },
    )


def _row_check(store: MilvusStore, collection: str, catalog: CatalogResource) -> RowCheck:
    """Rows per source in Milvus against the row count a one-pass build recorded, else against the chunk
    counts the catalog recorded for this collection; a collection neither vouches for fails."""
    catalog_chunks = {
        key: entry.chunks
        for key, entry in catalog.get().entries().items()
        if entry.status == INDEXED and entry.collection == collection
    }
    return check_rows(store.rows_by_source(collection), catalog_chunks, store.record(collection).expected_rows)


@asset_check(
    asset=retrieval_eval_report,
    name=ROWS_CHECK,
    description="The evaluated collection holds exactly the chunks the pipeline produced for it.",
)
def index_rows_match_chunks(
    context: AssetCheckExecutionContext, milvus: MilvusResource, catalog: CatalogResource
) -> AssetCheckResult:
    collection = latest_metadata(context.instance, "retrieval_eval_report").get("evaluated_collection")
    if not collection:
        return AssetCheckResult(
            passed=False,
            severity=AssetCheckSeverity.ERROR,
            metadata={"reason": "retrieval_eval_report recorded no evaluated collection — materialize it first"},
        )
    with milvus.store() as store:
        if not store.has_collection(str(collection)):
            return AssetCheckResult(
                passed=False,
                severity=AssetCheckSeverity.ERROR,
                metadata={"reason": f"the evaluated collection {collection} no longer exists"},
            )
        rows = _row_check(store, str(collection), catalog)
    return AssetCheckResult(
        passed=rows.passed,
        severity=AssetCheckSeverity.ERROR,
        metadata={
            "rows": rows.rows,
            "expected_rows": rows.expected_rows,
            "reason": rows.reason,
            "mismatched_sources": MetadataValue.json(rows.mismatched_sources[:50]),
            "sources_not_in_catalog": MetadataValue.json(rows.sources_not_in_catalog[:50]),
        },
    )
