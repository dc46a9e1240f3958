"""The promotion: moves the serving alias to the evaluated build, only past its quality gate, and the MLflow
registry alias `champion` to the model version the build embeds with."""

from dagster import AssetExecutionContext, Failure, MaterializeResult, asset

from rag_assets.assets.indexing import INDEX_WRITER_TAG
from rag_assets.assets.retrieval_eval import retrieval_eval_report
from rag_assets.reporting import latest_metadata
from rag_assets.resources import CatalogResource, MilvusResource, TrackingResource
from rag_core.promotion import promote, reranker_after_promotion

REJUDGE_RERANKER = "rejudge_reranker"  # metadata: the reranker to judge on the newly served build


@asset(group_name="evaluation", deps=[retrieval_eval_report], kinds={"milvus"}, op_tags=INDEX_WRITER_TAG)
def promoted_index(
    context: AssetExecutionContext, milvus: MilvusResource, catalog: CatalogResource, tracking: TrackingResource
) -> MaterializeResult:
    """Moves the serving alias to the evaluated build — only after its quality gate passed; a refused build
    fails the run with the gate's reason (the run-failure alert carries it) and the alias stays. The build it
    replaces is kept, so `rag rollback` restores it in one command. A build embedding with a registered model
    version makes that version the registry's `champion`. A reranker the replaced build served is named in
    the metadata (`rejudge_reranker`): `rerank_after_promotion_sensor` has it judged on the new build."""
    report = latest_metadata(context.instance, "retrieval_eval_report")
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
        replaced = previous if previous and previous != target and store.has_collection(previous) else ""
        reranker, rejudge = reranker_after_promotion(record, store.record(replaced) if replaced else None, replaced)
        if previous != target and record.expected_rows is not None:
            # A one-pass build: the catalog now tracks its rows, and incremental runs keep it current.
            rows = dict(store.rows_by_source(target))
            catalog.get().retarget(target, record.embedding_version, rows)
            store.update_record(target, expected_rows=None)
    moved = previous != target
    context.log.info(f"alias {milvus.alias} → {served}" + (f" (was {previous})" if moved else " (unchanged)"))
    registry = tracking.tracker().mark_champion(record.model_reference) if moved else "unchanged"
    context.log.info(f"registry: {registry}")
    (context.log.warning if rejudge else context.log.info)(f"reranker: {reranker}")
    return MaterializeResult(
        metadata={
            "served_collection": served,
            "previous_collection": previous or "none",
            "alias_moved": moved,
            "registry": registry,
            "reranker": reranker,
            **({REJUDGE_RERANKER: rejudge} if rejudge else {}),
            "ndcg_at_10": report["ndcg_at_10"],
            "rollback": "rag rollback" if moved and previous else "nothing to roll back to",
        }
    )
