"""The A/B decision: `experiment_report`, configured per experiment, reads the arms' traffic and feedback from
the serving database, computes their metrics with intervals, applies the rule the experiment declared and
states ship / keep / continue. It logs one run to the MLflow experiment `ab-tests` and renders the report
as markdown here. When a build wins, it faces the offline promotion gate (rag_core.promotion.judge) with the
tolerance rule — it already won online, so offline it must only not regress — before the alias moves; the
offline replay of every arm over the eval dataset's judged queries sits beside the online result."""

from dataclasses import asdict
from pathlib import Path

from dagster import AssetExecutionContext, Config, Failure, MaterializeResult, MetadataValue, asset
from pydantic import Field

from rag_assets.assets.indexing import INDEX_WRITER_TAG
from rag_assets.reporting import DagsterOrigin, embedded_report, measured_build, mlflow_links
from rag_assets.resources import (
    CatalogResource,
    EmbedderResource,
    EvaluationResource,
    MilvusResource,
    TrackingResource,
)
from rag_core.build_record import BuildRecord
from rag_core.errors import Refusal
from rag_core.evaluation import evaluate_collection
from rag_core.experiments import (
    CONTINUE,
    KEEP,
    SHIP,
    STOPPED,
    Experiment,
    ExperimentStore,
    Report,
    markdown,
    report,
    write_plot,
)
from rag_core.promotion import CANDIDATE, TOLERANCE, judge, promote, reject
from rag_core.query import DEFAULT_MODE
from rag_core.querylog import ServingDatabase
from rag_core.tracking import Tracker

AB_TESTS = "ab-tests"  # the MLflow experiment of every A/B report


class ExperimentReportConfig(Config):
    experiment: str = Field(..., description="The experiment's name (`rag experiment list`).")
    replay: bool = Field(True, description="Replay the arms offline first when the experiment has no replay yet.")
    promote: bool = Field(True, description="When a build ships, hold it to the offline gate and promote it.")
    max_queries: int = Field(0, ge=0, description="Judged queries of the replay and the gate; 0 = all.")
    stop_when_decided: bool = Field(
        False,
        description="Stop the experiment once it ships or keeps, so all traffic returns to the served build "
        "(the A/B tests of model updates: experiment_decision_sensor sets it).",
    )


def replay(
    milvus: MilvusResource,
    embedder: EmbedderResource,
    evaluation: EvaluationResource,
    experiment: Experiment,
    max_queries: int = 0,
) -> dict[str, float]:
    """nDCG@10 of each arm over the eval dataset's judged queries, through the query engine the API serves
    with: the arm's build (embedded with its own model), mode, fusion and top_k."""
    dataset = evaluation.dataset()

    def arms(store) -> dict[str, str]:
        served = milvus.served_collection(store)
        return {arm.name: arm.collection or served for arm in experiment.arms}

    found = {}
    with milvus.searchable(arms) as builds:
        for arm in experiment.arms:
            build = builds[arm.name]
            fusion = arm.overrides_fusion(evaluation.served_fusion(BuildRecord.from_properties(build.properties)))
            mode = arm.mode or DEFAULT_MODE
            result = evaluate_collection(
                build.searcher, build.collection, embedder.load_build(build.properties), dataset, [mode], fusion,
                evaluation.tenant, max_queries, depth=arm.top_k or 100,
            )
            found[arm.name] = round(result.modes[mode].means["ndcg@10"], 6)
    return found


def promote_winner(
    milvus: MilvusResource,
    embedder: EmbedderResource,
    evaluation: EvaluationResource,
    catalog: CatalogResource,
    tracker: Tracker,
    collection: str,
    max_queries: int = 0,
) -> dict[str, object]:
    """The winning build through the offline gate (`judge`, measured beside the served build in the gate's mode)
    with the tolerance rule: it already proved itself online, so offline it must only not fall more than the
    margin below the served build. Promoted only if it passes (its model version becomes the registry's
    `champion`); a failing one is marked rejected (its version loses `candidate`)."""
    dataset, mode = evaluation.dataset(), evaluation.gate_mode
    ndcg, measured = {}, {}
    with milvus.searchable(lambda store: {"served": milvus.served_collection(store), "winner": collection}) as builds:
        served = builds["served"].collection
        if served == collection:
            return {"promoted": False, "gate": f"{collection} is served already"}
        for role, build in builds.items():
            fusion = evaluation.served_fusion(BuildRecord.from_properties(build.properties))
            query_embedder = embedder.load_build(build.properties)
            result = evaluate_collection(
                build.searcher, build.collection, query_embedder, dataset, [mode], fusion, evaluation.tenant,
                max_queries,
            )
            ndcg[role] = result.modes[mode].means["ndcg@10"]
            measured[role] = measured_build(build, query_embedder.version, result, mode)
    with milvus.store() as store:
        decision = judge(
            store, collection, served, ndcg["winner"], ndcg["served"], evaluation.gate_margin, rule=TOLERANCE
        )
        record = store.record(collection)
        if not decision.passed:
            return {
                "promoted": False, "gate": decision.reason, "measured": measured,
                "registry": tracker.mark_rejected(record.model_reference, decision.reason),
            }
        promote(store, collection, ndcg["winner"])
        if record.expected_rows is not None:  # a one-pass build: the catalog tracks its rows from now on
            catalog.get().retarget(collection, record.embedding_version, dict(store.rows_by_source(collection)))
            store.update_record(collection, expected_rows=None)
    registry = tracker.mark_champion(record.model_reference)
    return {
        "promoted": True, "gate": decision.reason, "measured": measured, "previous_collection": served,
        "registry": registry,
    }


def log_ab_run(tracker: Tracker, result: Report, folder: Path, origin: DagsterOrigin) -> tuple[str, str]:
    """One run in `ab-tests`: the arms as params, each arm's metrics and offline nDCG, the report and its plot."""
    experiment, decision = result.experiment, result.decision
    params: dict[str, object] = {
        "experiment": experiment.name,
        "control": experiment.control,
        **{f"rule.{key}": value for key, value in experiment.to_dict()["rule"].items()},
    }
    for arm in experiment.arms:
        set_fields = {key: value for key, value in asdict(arm).items() if key != "name" and value not in (None, "")}
        params |= {f"arm.{arm.name}.{key}": value for key, value in set_fields.items()}
    metrics = {
        f"{arm}.{metric}": value for arm, found in decision.metrics.items() for metric, value in found.flat().items()
    }
    metrics |= {f"{arm}.offline_ndcg_at_10": value for arm, value in experiment.replay.items()}
    tags = {"verdict": decision.verdict, "winner": decision.winner or "", **origin.tags()}
    with tracker.run(AB_TESTS, f"{experiment.name}:{decision.verdict}", tags) as run:
        mlflow = tracker.mlflow()
        mlflow.log_params({key: str(value)[:500] for key, value in params.items()})
        mlflow.log_metrics(metrics)
        mlflow.log_artifacts(str(folder), artifact_path="report")
    return run.info.experiment_id, run.info.run_id


@asset(group_name="experiments", kinds={"mlflow"}, op_tags=INDEX_WRITER_TAG)
def experiment_report(
    context: AssetExecutionContext,
    config: ExperimentReportConfig,
    milvus: MilvusResource,
    embedder: EmbedderResource,
    evaluation: EvaluationResource,
    tracking: TrackingResource,
    catalog: CatalogResource,
) -> MaterializeResult:
    """An A/B experiment's per-arm metrics with intervals and the verdict of its declared rule (ship / keep /
    continue: nothing before every arm has the declared sample size), beside each arm's offline nDCG@10. A
    winning build is promoted only past the offline gate. Logged to MLflow (`ab-tests`)."""
    database = ServingDatabase(evaluation.serving_db_url)
    try:
        store = ExperimentStore(database.engine)
        experiment = store.get(config.experiment)
        if config.replay and not experiment.replay:
            store.record_replay(experiment.name, replay(milvus, embedder, evaluation, experiment, config.max_queries))
            experiment = store.get(config.experiment)
        result = report(database.engine, experiment)
        stopped = config.stop_when_decided and result.decision.verdict != CONTINUE
        if stopped and experiment.status != STOPPED:  # a person may have stopped it since
            store.set_status(experiment.name, STOPPED)
    except Refusal as refusal:
        raise Failure(str(refusal)) from refusal
    finally:
        database.close()
    decision = result.decision
    winner = experiment.arm(decision.winner) if decision.winner else None
    tracker = tracking.tracker()
    promotion: dict[str, object] = {"promoted": False, "gate": "nothing to promote"}
    if decision.verdict == SHIP and winner is not None and winner.collection and config.promote:
        promotion = promote_winner(
            milvus, embedder, evaluation, catalog, tracker, winner.collection, config.max_queries
        )
    if stopped and decision.verdict == KEEP:
        promotion["rejected"] = reject_losers(milvus, tracker, experiment, decision.reasons)
    folder = evaluation.report_folder(f"ab-{experiment.name}")
    write_plot(result, folder / "arms.png")
    (folder / "report.md").write_text(markdown(result, "arms.png") + f"\nPromotion: {promotion['gate']}\n")
    run = log_ab_run(tracker, result, folder, DagsterOrigin.of(context, tracking.dagster_ui_url))
    context.log.info(f"{experiment.name}: {decision.verdict} ({'; '.join(decision.reasons)})")
    return MaterializeResult(
        metadata={
            "experiment": experiment.name,
            "verdict": decision.verdict,
            "winner": decision.winner or "none yet",
            "primary_metric": experiment.rule.primary_metric,
            **_winner_interval(result),
            "reasons": "\n".join(decision.reasons),
            "arms": MetadataValue.json({arm: found.flat() for arm, found in decision.metrics.items()}),
            "offline_ndcg_at_10": MetadataValue.json(experiment.replay),
            "promoted": bool(promotion["promoted"]),
            "promotion_gate": str(promotion["gate"]),
            "promotion_gate_measured": MetadataValue.json(promotion.get("measured", {})),
            "stopped": stopped,
            "rejected_builds": ", ".join(promotion.get("rejected", [])) or "none",
            "registry": str(promotion.get("registry", "unchanged")),
            "report": MetadataValue.md(embedded_report(folder / "report.md")),
            "report_path": str(folder / "report.md"),
            **mlflow_links(tracker, {"mlflow_run": run}),
        }
    )


def reject_losers(milvus: MilvusResource, tracker: Tracker, experiment: Experiment, reasons: list[str]) -> list[str]:
    """The builds of a decided `keep`: each arm's collection still waiting as a candidate is marked rejected
    with the verdict (and its model version loses `candidate`), so no later promotion picks up a build its
    users turned down."""
    rejected = []
    with milvus.store() as store:
        for arm in experiment.arms:
            if not arm.collection or not store.has_collection(arm.collection):
                continue
            record = store.record(arm.collection)
            if record.status != CANDIDATE:
                continue
            reason = f"A/B test {experiment.name} kept the control: " + "; ".join(reasons)
            reject(store, arm.collection, reason)
            tracker.mark_rejected(record.model_reference, reason)
            rejected.append(arm.collection)
    return rejected


def _winner_interval(result: Report) -> dict[str, float]:
    """The winning arm's primary metric and its 95% interval; nothing while the experiment continues."""
    primary = result.winner_primary
    if primary is None or primary.value is None or primary.low is None or primary.high is None:
        return {}
    return {"winner_primary": primary.value, "winner_primary_low": primary.low, "winner_primary_high": primary.high}
