"""The documents sensor: the watched folder drives the partitions and the runs.

New or changed file → its partition is added and a run is requested with a run key of partition (doc
id) + content hash + catalog generation + build: an unchanged file never re-runs, an in-flight change is
never requested twice, a file reverted to an earlier content still re-runs, and a run refused because the
served build changed after it was requested is requested again for the new build. The build (model,
chunking, target collection) is decided here, once per tick, and travels with each run as a tag.
More changes than the batch threshold in one tick → one batched run over the partition range instead of a
run each. Deleted file → its partition is dropped and a run deletes its vectors.
"""

from dagster import (
    AddDynamicPartitionsRequest,
    AssetKey,
    DefaultSensorStatus,
    DeleteDynamicPartitionsRequest,
    RunRequest,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

from rag_assets.assets.indexing import build_tags
from rag_assets.jobs import evaluation_job, index_documents_job, remove_documents_job
from rag_assets.partitions import documents_partitions
from rag_assets.resources import CatalogResource, EmbedderResource, SourcesResource
from rag_core.catalog import CatalogEntry
from rag_core.documents import SourceUnit
from rag_core.ids import content_hash

PartitionRequest = AddDynamicPartitionsRequest | DeleteDynamicPartitionsRequest


def _changes(
    units: dict[str, SourceUnit], entries: dict[str, CatalogEntry], embedder: EmbedderResource
) -> tuple[dict[str, str], dict[str, str]]:
    """The run key of each new or changed file — partition (doc id) + content hash + catalog generation +
    build — and the run tags that carry the build, decided once for the tick (nothing changed: none)."""
    changed = {
        key: f"{key}:{unit.content_hash}:{entries[key].generation if key in entries else 0}"
        for key, unit in sorted(units.items())
        if key not in entries or entries[key].content_hash != unit.content_hash
    }
    if not changed:
        return {}, {}
    spec = embedder.decide_build()
    build = content_hash(spec.to_json(), 12)
    return {key: f"{run_key}:{build}" for key, run_key in changed.items()}, build_tags(spec)


def _index_requests(
    order: list[str], changed: dict[str, str], tags: dict[str, str], batch_threshold: int
) -> list[RunRequest]:
    """A run per changed partition, or past the threshold one batched run over the range of `order` (the
    partitions in their Dagster order) that spans them."""
    if len(changed) <= batch_threshold:
        return [
            RunRequest(job_name=index_documents_job.name, partition_key=key, run_key=run_key, tags=tags)
            for key, run_key in changed.items()
        ]
    # Many changes at once (a bulk drop): one batched run instead of a run each; unchanged partitions
    # inside the range cost a parse and cache lookups.
    positions = sorted(order.index(key) for key in changed)
    return [
        RunRequest(
            job_name=index_documents_job.name,
            run_key=f"batch:{content_hash(','.join(changed.values()))}",
            tags={
                ASSET_PARTITION_RANGE_START_TAG: order[positions[0]],
                ASSET_PARTITION_RANGE_END_TAG: order[positions[-1]],
                **tags,
            },
        )
    ]


def _remove_request(deleted: list[str], entries: dict[str, CatalogEntry]) -> RunRequest:
    """One run deleting these partitions' vectors, keyed by their catalog generations."""
    generations = ",".join(f"{key}@{entries[key].generation if key in entries else 0}" for key in deleted)
    return RunRequest(
        job_name=remove_documents_job.name,
        run_key=f"remove:{content_hash(generations)}",
        run_config={"ops": {"remove_documents": {"config": {"partition_keys": deleted}}}},
    )


def _partition_requests(new: list[str], gone: list[str]) -> list[PartitionRequest]:
    requests: list[PartitionRequest] = []
    if new:
        requests.append(AddDynamicPartitionsRequest(documents_partitions.name, new))
    if gone:
        requests.append(DeleteDynamicPartitionsRequest(documents_partitions.name, gone))
    return requests


@sensor(
    jobs=[index_documents_job, remove_documents_job],
    minimum_interval_seconds=30,
    default_status=DefaultSensorStatus.RUNNING,
)
def documents_sensor(
    context: SensorEvaluationContext, sources: SourcesResource, catalog: CatalogResource, embedder: EmbedderResource
) -> SensorResult | SkipReason:
    units = {unit.partition_key: unit for unit in sources.discover()}
    partitions = context.instance.get_dynamic_partitions(documents_partitions.name)
    entries = catalog.get().entries()
    new_partitions = sorted(set(units) - set(partitions))
    changed, tags = _changes(units, entries, embedder)
    order = [key for key in partitions if key in units] + new_partitions
    run_requests = _index_requests(order, changed, tags, sources.batch_threshold)
    deleted = sorted((set(partitions) | set(entries)) - set(units))
    if deleted:
        run_requests.append(_remove_request(deleted, entries))
    partition_requests = _partition_requests(new_partitions, sorted(set(partitions) - set(units)))
    if not run_requests and not partition_requests:
        return SkipReason(f"{len(units)} source partitions, all indexed and unchanged")
    context.log.info(f"{len(new_partitions)} new, {len(changed)} to (re)index, {len(deleted)} deleted")
    return SensorResult(run_requests=run_requests, dynamic_partitions_requests=partition_requests)


@sensor(job=evaluation_job, minimum_interval_seconds=60, default_status=DefaultSensorStatus.RUNNING)
def eval_after_reindex_sensor(context: SensorEvaluationContext) -> RunRequest | SkipReason:
    """Every index change (a milvus_collection materialization) gets an evaluation run of the served
    index; its gate check flags a regression against the nDCG recorded when the build was promoted."""
    records = context.instance.fetch_materializations(AssetKey("milvus_collection"), limit=1).records
    if not records:
        return SkipReason("the index has not been materialized yet")
    latest = records[0].storage_id
    if context.cursor and int(context.cursor) >= latest:
        return SkipReason(f"no index change since event {context.cursor}")
    context.update_cursor(str(latest))
    return RunRequest(run_key=f"eval-after:{latest}")
