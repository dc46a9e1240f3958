"""Keeping the index true to the folder: removing deleted files' vectors, and the nightly reconcile."""

from dagster import (
    AssetExecutionContext,
    AssetObservation,
    Config,
    DagsterInstance,
    DagsterRunStatus,
    MaterializeResult,
    MetadataValue,
    OpExecutionContext,
    ResourceParam,
    RunsFilter,
    asset,
    op,
)
from dagster._core.storage.dagster_run import NOT_FINISHED_STATUSES, DagsterRun
from dagster._core.storage.tags import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
    PARTITION_NAME_TAG,
    WILL_RETRY_TAG,
)

from rag_assets.assets.indexing import INDEX_ASSETS, INDEX_WRITER_TAG
from rag_assets.io_manager import PartitionedPickleIOManager
from rag_assets.resources import CatalogResource, MilvusResource, SourcesResource
from rag_core.catalog import PENDING, QUARANTINED, CatalogEntry
from rag_core.documents import SourceUnit
from rag_core.indexing import ReconcilePlan, plan_reconcile, remove_sources

STAGED_ASSETS = [list(asset_def.key.path) for asset_def in INDEX_ASSETS]


class RemoveDocumentsConfig(Config):
    partition_keys: list[str]


@op(tags=INDEX_WRITER_TAG)
def remove_documents(
    context: OpExecutionContext,
    config: RemoveDocumentsConfig,
    milvus: MilvusResource,
    catalog: CatalogResource,
    staging_io_manager: ResourceParam[PartitionedPickleIOManager],
) -> None:
    """Delete the vectors, staged outputs and catalog entries of deleted source files."""
    keys = sorted(config.partition_keys)
    with milvus.store() as store:
        removed_rows = remove_sources(store, keys)
    staged = staging_io_manager.delete_partitions(STAGED_ASSETS, keys)
    catalog.get().remove(keys)
    for key in keys:
        context.log_event(AssetObservation(asset_key="milvus_collection", partition=key, metadata={"removed": True}))
    context.log.info(f"removed {len(keys)} source partition(s): {removed_rows} Milvus rows, {staged} staged files")


def _drift_report(plan: ReconcilePlan) -> str:
    """Markdown: each kind of drift with (up to 20 of) its partitions."""
    return "\n".join(
        f"- **{name}** ({len(keys)}): {', '.join(keys[:20])}{' …' if len(keys) > 20 else ''}"
        for name, keys in vars(plan).items()
        if keys
    )


def awaiting_dagster_retry(run: DagsterRun) -> bool:
    """Dagster's run retries are about to run this failed run again. Only a run launched from the code
    location can be: an in-process run (`rag index`) has no origin to relaunch, whatever its tags say."""
    return run.remote_job_origin is not None and run.is_complete_and_waiting_to_retry


def _live_partitions(instance: DagsterInstance, order: list[str]) -> set[str]:
    """The document partitions that a queued or running run covers, or a failed one Dagster is about to retry."""
    runs = list(instance.get_runs(RunsFilter(statuses=NOT_FINISHED_STATUSES)))
    retrying = RunsFilter(statuses=[DagsterRunStatus.FAILURE], tags={WILL_RETRY_TAG: "true"})
    runs += [run for run in instance.get_runs(retrying, limit=100) if awaiting_dagster_retry(run)]
    live: set[str] = set()
    for run in runs:
        if PARTITION_NAME_TAG in run.tags:
            live.add(run.tags[PARTITION_NAME_TAG])
        start, end = run.tags.get(ASSET_PARTITION_RANGE_START_TAG), run.tags.get(ASSET_PARTITION_RANGE_END_TAG)
        if start in order and end in order:  # a batched run (the sensor's, or `rag index`) over a range
            live.update(order[order.index(start) : order.index(end) + 1])
    return live


def _unindexed(units: dict[str, SourceUnit], entries: dict[str, CatalogEntry]) -> set[str]:
    """Files the catalog does not record as they are now: new, changed, or marked stale."""
    return {key for key, unit in units.items() if key not in entries or entries[key].content_hash != unit.content_hash}


def _requeue(catalog: CatalogResource, keys: list[str], units: dict[str, SourceUnit]) -> None:
    """Fresh run keys for files whose run was lost or failed: the sensor's next tick requests them."""
    catalog.get().request_again(
        CatalogEntry(key, units[key].relative_path, units[key].tenant, content_hash="", status=PENDING) for key in keys
    )


def _repair_partitions(
    instance: DagsterInstance, plan: ReconcilePlan, catalog: CatalogResource, staging: PartitionedPickleIOManager
) -> None:
    """The Dagster and catalog side of a plan: partitions added and dropped (with their staged outputs),
    forgotten files out of the catalog, drifted ones marked stale for the sensor to re-index."""
    if plan.add_partitions:
        instance.add_dynamic_partitions("documents", plan.add_partitions)
    for key in plan.delete_partitions:
        instance.delete_dynamic_partition("documents", key)
    staging.delete_partitions(STAGED_ASSETS, plan.delete_partitions)
    if plan.forget:
        catalog.get().remove(plan.forget)
    if plan.reindex:
        catalog.get().mark_stale(plan.reindex)


@asset(group_name="maintenance", kinds={"milvus"}, op_tags=INDEX_WRITER_TAG)
def index_reconciliation(
    context: AssetExecutionContext,
    sources: SourcesResource,
    milvus: MilvusResource,
    catalog: CatalogResource,
    staging_io_manager: ResourceParam[PartitionedPickleIOManager],
) -> MaterializeResult:
    """Compares the source folder, the Dagster partitions, the catalog and the served Milvus collection,
    and repairs drift: adds missing partitions, drops stale ones and orphan vectors, marks files whose
    vectors do not match for the sensor to re-index, and requests again files left unindexed with no queued
    or running run (their run failed, or never started)."""
    units = {unit.partition_key: unit for unit in sources.discover()}
    source_keys = set(units)
    order = context.instance.get_dynamic_partitions("documents")
    partitions = set(order)
    entries = catalog.get().entries()
    unindexed = _unindexed(units, entries) - _live_partitions(context.instance, order)
    with milvus.store() as store:
        served = store.alias_target()
        milvus_rows = dict(store.rows_by_source(served)) if served else {}
        plan = plan_reconcile(
            source_keys,
            partitions,
            {key: (None if e.status == QUARANTINED else e.chunks) for key, e in entries.items()},
            milvus_rows,
            unindexed,
        )
        removed_rows = (
            remove_sources(store, plan.orphan_sources + plan.forget) if (plan.orphan_sources or plan.forget) else 0
        )
    _repair_partitions(context.instance, plan, catalog, staging_io_manager)
    if plan.requeue:
        _requeue(catalog, plan.requeue, units)
    context.log.info(f"reconcile: {plan.summary()}")
    return MaterializeResult(
        metadata={
            **plan.summary(),
            "removed_rows": removed_rows,
            "served_collection": served or "none",
            "clean": plan.is_clean,
            "report": MetadataValue.md(_drift_report(plan) or "no drift"),
        }
    )
