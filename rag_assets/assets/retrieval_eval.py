"""The retrieval report on the live index, and its two checks.

`retrieval_eval_report` evaluates the build waiting for promotion (a candidate collection) next to the
served one, or the served one alone after an index change, each beside its naive baseline (rag_core.baseline);
a build below the baseline in any mode is a warning naming the likely cause. Each build is evaluated with the
fusion the API serves it with, and where the API reranks it, also reranked in those modes (reported beside the
first stage, which the gate compares). Where the dataset has a train split, the hybrid fusion weights are tuned on it
(rag_core.fusion_tuning) and adopted for the evaluated build only if they hold on the evaluation split — the
API serves them from its next poll, unless the environment sets the fusion. The gate (rag_core.promotion.judge)
holds a candidate to the improvement rule by default — a gain of at least RAG_PROMOTION_MIN_EFFECT whose paired
bootstrap interval over the judged queries excludes zero — and the served build re-evaluated after a reindex to
the tolerance margin. Its blocking check fails with the gate, so `promoted_index` never runs on a build that did
not pass.
"""

import time

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
from rag_assets.reporting import (
    DagsterOrigin,
    baseline_metrics,
    embedded_report,
    latest_metadata,
    log_retrieval_runs,
    measured_build,
    metric_names,
    mlflow_links,
)
from rag_assets.resources import (
    CatalogResource,
    EmbedderResource,
    EvaluationResource,
    MilvusResource,
    SearchableBuild,
    TrackingResource,
)
from rag_core.baseline import shortfall
from rag_core.build_record import BuildRecord
from rag_core.catalog import INDEXED
from rag_core.evaluation import RetrievalEvaluation, evaluate_collection, judged_dataset, write_report
from rag_core.fusion_tuning import FusionProposal, describe, propose_fusion
from rag_core.indexing import RowCheck, check_rows
from rag_core.promotion import GATE_RULES, IMPROVEMENT, GateDecision, adopt_fusion, judge, waiting_candidate
from rag_core.store import MilvusStore

GATE_CHECK = "ndcg_within_margin_of_promoted"
ROWS_CHECK = "index_rows_match_chunks"


class RetrievalEvalConfig(Config):
    target: str = Field(
        "served",
        description="`served`, `candidate` (the newest build waiting for promotion) or a collection name.",
    )
    max_queries: int = Field(-1, ge=-1, description="-1 = RAG_EVAL_MAX_QUERIES; 0 = every judged query.")
    rule: str = Field(
        IMPROVEMENT,
        pattern=f"^({'|'.join(GATE_RULES)})$",
        description="The gate a candidate faces: `improvement` (beat the served build by RAG_PROMOTION_MIN_EFFECT, "
        "with a paired bootstrap interval over the judged queries above zero) or `tolerance` (not more than "
        "RAG_EVAL_GATE_MARGIN below it: for a build that already won an A/B test). The served build re-evaluated "
        "alone always faces tolerance.",
    )


def _roles(store: MilvusStore, target: str, served: str) -> dict[str, str]:
    """{role: collection} for a `RetrievalEvalConfig.target`: the build evaluated first (a candidate, or the
    served build alone), then the served one beside a candidate."""
    if target == "candidate":
        candidate = waiting_candidate(store)
        if candidate is None:
            raise Failure("no candidate build is waiting — build one (`rag promote --model …`, candidate_index)")
        target = candidate
    elif target == "served":
        target = served
    if not store.has_collection(target):
        raise Failure(f"collection {target} does not exist — `rag builds` lists the builds")
    return {"candidate": target, "served": served} if target != served else {"served": served}


def _max_queries(evaluation: EvaluationResource, config: RetrievalEvalConfig) -> int:
    return evaluation.max_queries if config.max_queries < 0 else config.max_queries


def _evaluate(
    build: SearchableBuild, embedder: EmbedderResource, evaluation: EvaluationResource, config: RetrievalEvalConfig
) -> RetrievalEvaluation:
    record = BuildRecord.from_properties(build.properties)
    try:
        reranker = evaluation.served_reranker(record, embedder.resolver(), embedder.device)
    except (FileNotFoundError, ValueError) as error:  # the API would not serve this build either
        raise Failure(
            f"{build.collection} is served with a reranker that does not load ({error}) — the API refuses to serve "
            "it too; fix the MLflow registry or set RAG_RERANK_MODEL=off"
        ) from error
    return evaluate_collection(
        build.searcher,
        build.collection,
        embedder.load_build(build.properties),  # queries embed as the build's chunks were
        evaluation.dataset(),
        evaluation.modes,
        evaluation.served_fusion(record),
        evaluation.tenant,
        _max_queries(evaluation, config),
        baseline_cache=embedder.cache(),
        reranker=reranker,  # the modes the API reranks are also measured reranked, as served
        rerank_candidates=evaluation.rerank_candidates,
    )


def _propose_fusion(
    build: SearchableBuild,
    embedder: EmbedderResource,
    evaluation: EvaluationResource,
    config: RetrievalEvalConfig,
    evaluated: RetrievalEvaluation,
) -> FusionProposal | str:
    """Fusion weights tuned on the train split for `build`, judged on the queries it was just evaluated on;
    or why there is nothing to tune."""
    if not evaluation.tune_fusion:
        return "off (RAG_EVAL_TUNE_FUSION=false)"
    if "hybrid" not in evaluated.modes:
        return "hybrid is not among the evaluated modes"
    if evaluation.train_split == evaluation.split:
        return f"the train split is the evaluation split ({evaluation.split}): tuning on it would grade its own work"
    limit = _max_queries(evaluation, config)
    doc_ids = build.searcher.doc_ids()
    try:
        tuning_queries = judged_dataset(evaluation.dataset(evaluation.train_split), doc_ids, build.collection, limit)
    except (FileNotFoundError, ValueError) as error:
        return f"no labelled {evaluation.train_split} queries for this build ({error})"
    gate_queries = judged_dataset(evaluation.dataset(), doc_ids, build.collection, limit)
    current = evaluation.served_fusion(BuildRecord.from_properties(build.properties))
    return propose_fusion(
        build.searcher, embedder.load_build(build.properties), tuning_queries, gate_queries, evaluation.tenant,
        current, evaluated.modes["hybrid"].means["ndcg@10"],
    )


def _fusion_metadata(proposal: FusionProposal | str) -> dict[str, object]:
    if isinstance(proposal, str):
        return {"fusion_tuning": f"skipped: {proposal}", "fusion_adopted": False}
    tuning = proposal.tuning
    return {
        "fusion_tuning": MetadataValue.md(f"Tuned on {tuning.dataset} ({tuning.queries} queries)\n\n{tuning.table()}"),
        "fusion_served": describe(tuning.current.fusion),
        "fusion_proposed": describe(tuning.best.fusion) if tuning.proposal() else "none",
        "fusion_proposed_ndcg_at_10": proposal.proposed_ndcg if proposal.proposed_ndcg is not None else "none",
        "fusion_adopted": proposal.decision.adopted,
        "fusion_reason": proposal.decision.reason,
    }


def _gate_metadata(decision: GateDecision) -> dict[str, object]:
    def shown(value: float | None) -> float | str:
        return value if value is not None else "none"

    return {
        "ndcg_at_10": decision.candidate_ndcg,
        "baseline_ndcg_at_10": shown(decision.baseline_ndcg),
        "gate_rule": decision.rule,
        "gate_min_effect": shown(decision.min_effect),
        "gate_effect": shown(decision.effect),
        "gate_effect_low": shown(decision.effect_low),
        "gate_effect_high": shown(decision.effect_high),
        "gate_passed": decision.passed,
        "gate_reason": decision.reason,
    }


def _metrics_metadata(evaluations: dict[str, RetrievalEvaluation]) -> dict[str, float]:
    """Every build's metrics per mode (`<role>_<mode>_<metric>`) and over its naive baseline."""
    per_mode = {
        key: value
        for role, result in evaluations.items()
        for mode, scores in result.modes.items()
        for key, value in metric_names(scores.means, f"{role}_{mode}_").items()
    }
    reranked = {
        key: value
        for role, result in evaluations.items()
        for mode, scores in (result.reranked.modes if result.reranked else {}).items()
        for key, value in metric_names(scores.means, f"{role}_{mode}_reranked_").items()
    }
    return per_mode | reranked | {
        f"{role}_{key}": value
        for role, result in evaluations.items()
        for key, value in baseline_metrics(result).items()
    }


def _shortfall_metadata(
    context: AssetExecutionContext, evaluations: dict[str, RetrievalEvaluation]
) -> dict[str, object]:
    """Every build that loses to its naive baseline in some mode, with the likely cause; each is warned of."""
    shortfalls = {role: losing for role, result in evaluations.items() if (losing := shortfall(result))}
    for losing in shortfalls.values():
        context.log.warning(f"naive baseline: {losing.message}")
    return {
        "below_naive_baseline": MetadataValue.json(
            {role: {"modes": losing.margins, "cause": losing.cause} for role, losing in shortfalls.items()}
        ),
        "naive_baseline_warning": " ".join(losing.message for losing in shortfalls.values()) or "none",
    }


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
    with milvus.searchable(lambda store: _roles(store, config.target, milvus.served_collection(store))) as builds:
        evaluations = {role: _evaluate(build, embedder, evaluation, config) for role, build in builds.items()}
        measured = {
            role: measured_build(
                build, embedder.load_build(build.properties).version, evaluations[role], evaluation.gate_mode
            )
            for role, build in builds.items()
        }
        role = "candidate" if "candidate" in builds else "served"
        proposal = _propose_fusion(builds[role], embedder, evaluation, config, evaluations[role])
    target, served = builds[role].collection, builds["served"].collection
    gated = {name: result.modes[evaluation.gate_mode] for name, result in evaluations.items()}
    with milvus.store() as store:
        decision = judge(
            store, target, served, gated[role].means["ndcg@10"], gated["served"].means["ndcg@10"],
            evaluation.gate_margin, rule=config.rule, min_effect=evaluation.promotion_min_effect,
            scores=gated[role].per_query["ndcg@10"], served_scores=gated["served"].per_query["ndcg@10"],
        )
        records = {name: store.record(name) for name in {target, served}}
        if not isinstance(proposal, str):
            adopt_fusion(store, target, proposal.decision)  # served from the API's next poll
    report = write_report(evaluations, evaluation.report_folder(target), f"Retrieval evaluation of {target}")
    tracker = tracking.tracker()
    registry = "unchanged"
    if role == "candidate" and not decision.passed:  # its model version stays, no longer the candidate
        registry = tracker.mark_rejected(records[target].model_reference, decision.reason)
    origin = DagsterOrigin.of(context, tracking.dagster_ui_url)
    runs = log_retrieval_runs(tracker, evaluations, records, evaluation, report, origin)
    (context.log.info if decision.passed else context.log.error)(f"quality gate: {decision.reason}")
    return MaterializeResult(
        metadata={
            "evaluated_collection": target,
            "served_collection": served,
            "role": role,
            "gate_mode": evaluation.gate_mode,
            **_gate_metadata(decision),
            "gate_measured": MetadataValue.json(measured),
            "registry": registry,
            **_shortfall_metadata(context, evaluations),
            **_fusion_metadata(proposal),
            "reranked_as_served": MetadataValue.json(
                {name: result.reranker for name, result in evaluations.items() if result.reranker}
            ),
            "queries": evaluations[role].queries,
            "dropped_queries": evaluations[role].dropped_queries,
            "report": MetadataValue.md(embedded_report(report)),
            "report_path": MetadataValue.path(str(report)),
            "mlflow_runs": MetadataValue.json({name: run_id for name, (_, run_id) in runs.items()}),
            **{f"mlflow_run {name}": link for name, link in mlflow_links(tracker, runs).items()},
            "seconds": round(time.perf_counter() - started, 3),
            **_metrics_metadata(evaluations),
        }
    )


@asset_check(
    asset=retrieval_eval_report,
    name=GATE_CHECK,
    blocking=True,
    description="The quality gate: a candidate beats the served build by the minimum effect (its paired interval "
    "above zero), or — with the tolerance rule, and for the served build after a reindex — falls no more than the "
    "margin below it.",
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
            "rule": report.get("gate_rule", "tolerance"),
            "margin": evaluation.gate_margin,
            "min_effect": report.get("gate_min_effect", "none"),
            "effect": report.get("gate_effect", "none"),
            "reason": report["gate_reason"],
            "margin_over_naive_ndcg_at_10": report.get(
                f"{report['role']}_margin_{evaluation.gate_mode}_ndcg_at_10", "none"
            ),
        },
    )


def _row_check(store: MilvusStore, collection: str, catalog: CatalogResource) -> RowCheck:
    """Rows per source in Milvus against the row count a one-pass build recorded, else against the chunk
    counts the catalog recorded for this collection; a collection neither vouches for fails.

    The record is read before the catalog: promotion retargets the catalog first and clears `expected_rows`
    after, so whichever state this check meets, the pair it reads agrees."""
    expected_rows = store.record(collection).expected_rows
    catalog_chunks = {
        key: entry.chunks
        for key, entry in catalog.get().entries().items()
        if entry.status == INDEXED and entry.collection == collection
    }
    return check_rows(store.rows_by_source(collection), catalog_chunks, expected_rows)


@asset_check(
    asset=retrieval_eval_report,
    name=ROWS_CHECK,
    # Blocking: a build missing rows is never promoted, and `promoted_index` (which retargets the catalog
    # this check reads) waits for it instead of racing it under the multiprocess executor.
    blocking=True,
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
