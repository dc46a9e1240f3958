"""Keeping the index true to the folder: removing deleted files' vectors, and the nightly reconcile."""

from dagster import (
    AssetExecutionContext,
    AssetObservation,
    Config,
    DagsterInstance,
    MaterializeResult,
    MetadataValue,
    OpExecutionContext,
    ResourceParam,
    asset,
    op,
)

from rag_assets.assets.indexing import INDEX_ASSETS, INDEX_WRITER_TAG
from rag_assets.io_manager import PartitionedPickleIOManager
from rag_assets.resources import CatalogResource, MilvusResource, SourcesResource
from rag_core.catalog import QUARANTINED
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
    and repairs drift: adds missing partitions, drops stale ones and orphan vectors, and marks files whose
    vectors do not match for the sensor to re-index."""
    source_keys = {unit.partition_key for unit in sources.discover()}
    partitions = set(context.instance.get_dynamic_partitions("documents"))
    entries = catalog.get().entries()
    with milvus.store() as store:
        served = store.alias_target()
        milvus_rows = dict(store.rows_by_source(served)) if served else {}
        plan = plan_reconcile(
            source_keys,
            partitions,
            {key: (None if e.status == QUARANTINED else e.chunks) for key, e in entries.items()},
            milvus_rows,
        )
        removed_rows = (
            remove_sources(store, plan.orphan_sources + plan.forget) if (plan.orphan_sources or plan.forget) else 0
        )
    _repair_partitions(context.instance, plan, catalog, staging_io_manager)
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
