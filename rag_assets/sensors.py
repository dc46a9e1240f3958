"""The documents sensor: the watched folder drives the partitions and the runs.

New or changed file → its partition is added and a run is requested with a run key of partition (doc
id) + content hash + catalog generation: an unchanged file never re-runs, an in-flight change is never
requested twice, and a file reverted to an earlier content still re-runs. Deleted file → its partition
is dropped and a run deletes its vectors.
"""

from dagster import (
    AddDynamicPartitionsRequest,
    DefaultSensorStatus,
    DeleteDynamicPartitionsRequest,
    RunRequest,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    define_asset_job,
    sensor,
)

from rag_assets.assets.indexing import INDEX_ASSETS, INDEX_WRITER_TAG
from rag_assets.maintenance import remove_documents_job
from rag_assets.partitions import documents_partitions
from rag_assets.resources import CatalogResource, SourcesResource
from rag_core.ids import content_hash

index_documents_job = define_asset_job(
    "index_documents_job",
    selection=INDEX_ASSETS,
    partitions_def=documents_partitions,
    tags=INDEX_WRITER_TAG,
    description="Parse → chunk → embed → upsert into Milvus for the selected document partitions.",
)


@sensor(
    jobs=[index_documents_job, remove_documents_job],
    minimum_interval_seconds=30,
    default_status=DefaultSensorStatus.RUNNING,
)
def documents_sensor(
    context: SensorEvaluationContext, sources: SourcesResource, catalog: CatalogResource
) -> SensorResult | SkipReason:
    units = {unit.partition_key: unit for unit in sources.discover()}
    partitions = set(context.instance.get_dynamic_partitions(documents_partitions.name))
    entries = catalog.get().entries()

    new_partitions = sorted(set(units) - partitions)
    run_requests = []
    for key, unit in sorted(units.items()):
        entry = entries.get(key)
        if entry is None or entry.content_hash != unit.content_hash:
            generation = entry.generation if entry else 0
            run_requests.append(RunRequest(partition_key=key, run_key=f"{key}:{unit.content_hash}:{generation}"))

    deleted = sorted((partitions | set(entries)) - set(units))
    if deleted:
        generations = ",".join(f"{key}@{entries[key].generation if key in entries else 0}" for key in deleted)
        run_requests.append(
            RunRequest(
                job_name=remove_documents_job.name,
                run_key=f"remove:{content_hash(generations)}",
                run_config={"ops": {"remove_documents": {"config": {"partition_keys": deleted}}}},
            )
        )
    partition_requests = []
    if new_partitions:
        partition_requests.append(AddDynamicPartitionsRequest(documents_partitions.name, new_partitions))
    gone = sorted(partitions - set(units))
    if gone:
        partition_requests.append(DeleteDynamicPartitionsRequest(documents_partitions.name, gone))
    if not run_requests and not partition_requests:
        return SkipReason(f"{len(units)} source partitions, all indexed and unchanged")
    context.log.info(
        f"{len(new_partitions)} new, {len(run_requests) - bool(deleted)} to (re)index, {len(deleted)} deleted"
    )
    return SensorResult(run_requests=run_requests, dynamic_partitions_requests=partition_requests)
