"""The documents sensor: the watched folder drives the partitions and the runs.

New or changed file → its partition is added and a run is requested with a run key of partition (doc
id) + content hash + catalog generation + build: an unchanged file never re-runs, an in-flight change is
never requested twice, a file reverted to an earlier content still re-runs, and a run refused because the
served build changed after it was requested is requested again for the new build. The build (model,
chunking, target collection) is decided here, once per tick, and travels with each run as a tag.
More changes than the batch threshold in one tick → one batched run over the partition range instead of a
run each. Deleted file → its partition is dropped and a run deletes its vectors.

A requested run that fails (or never starts) is not the end of its change: Dagster's run retries try it
again first (`run_retries` in dagster.yaml, `dagster/max_retries` on the index jobs); once they are spent,
the sensor requests the change again under a new run key (change + attempt number) after a backoff that
doubles per failed attempt up to a cap (RAG_INDEX_RETRY_DELAY_S, RAG_INDEX_RETRY_MAX_DELAY_S).
"""

import time
from dataclasses import dataclass

from dagster import (
    AddDynamicPartitionsRequest,
    AssetKey,
    DagsterInstance,
    DagsterRunStatus,
    DefaultSensorStatus,
    DeleteDynamicPartitionsRequest,
    RunRequest,
    RunsFilter,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

from rag_assets.assets.indexing import build_tags
from rag_assets.jobs import evaluation_job, index_documents_job, remove_documents_job
from rag_assets.maintenance import awaiting_dagster_retry
from rag_assets.partitions import documents_partitions
from rag_assets.resources import CatalogResource, EmbedderResource, SourcesResource
from rag_core.catalog import CatalogEntry
from rag_core.documents import SourceUnit
from rag_core.ids import content_hash

PartitionRequest = AddDynamicPartitionsRequest | DeleteDynamicPartitionsRequest
CHANGE_TAG = "rag/change"  # the run key of a change, on every attempt at it (Dagster's retries copy it)
ATTEMPT_TAG = "rag/attempt"
RETRYABLE = (DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED)


@dataclass(frozen=True)
class RetryBackoff:
    """How long the sensor waits after a change's latest failed attempt before requesting it again."""

    delay_s: float
    max_delay_s: float

    def delay(self, failed_attempts: int) -> float:
        # The exponent is capped first so that a change failing for weeks never overflows the float.
        return min(self.delay_s * 2 ** min(max(failed_attempts - 1, 0), 32), self.max_delay_s)


def _attempt(instance: DagsterInstance, request: RunRequest, backoff: RetryBackoff, now: float) -> RunRequest | None:
    """The request for this change's next attempt, or None while one is queued or running, once one has
    succeeded, while Dagster is about to retry a failed one, or until the backoff after it has passed."""
    change = request.run_key
    attempts = RunsFilter(tags={CHANGE_TAG: change})
    latest = instance.get_run_records(attempts, limit=1)
    if not latest:
        return request.with_replaced_attrs(tags={**request.tags, CHANGE_TAG: change, ATTEMPT_TAG: "0"})
    run = latest[0].dagster_run
    if run.status not in RETRYABLE or awaiting_dagster_retry(run):
        return None
    failed = instance.get_runs_count(attempts)
    ended = latest[0].end_time or latest[0].update_timestamp.timestamp()
    if now < ended + backoff.delay(failed):
        return None
    return request.with_replaced_attrs(
        run_key=f"{change}:attempt{failed}", tags={**request.tags, CHANGE_TAG: change, ATTEMPT_TAG: str(failed)}
    )


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
    wanted = _index_requests(order, changed, tags, sources.batch_threshold)
    deleted = sorted((set(partitions) | set(entries)) - set(units))
    if deleted:
        wanted.append(_remove_request(deleted, entries))
    backoff, now = RetryBackoff(sources.retry_delay_s, sources.retry_max_delay_s), time.time()
    attempts = [_attempt(context.instance, request, backoff, now) for request in wanted]
    run_requests = [request for request in attempts if request is not None]
    partition_requests = _partition_requests(new_partitions, sorted(set(partitions) - set(units)))
    if not run_requests and not partition_requests:
        if wanted:
            return SkipReason(f"{len(wanted)} change(s) already requested: in flight, or backing off after a failure")
        return SkipReason(f"{len(units)} source partitions, all indexed and unchanged")
    context.log.info(
        f"{len(new_partitions)} new, {len(changed)} to (re)index, {len(deleted)} deleted; "
        f"{len(run_requests)} of {len(wanted)} requested now (the others in flight or backing off)"
    )
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
