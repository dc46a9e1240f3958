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

`rerank_after_promotion_sensor` has the reranker a promotion left behind (the replaced build served it; a
reranker is judged per build) judged on the newly served build, without training it again.

`model_update_sensor` starts a model update (rag_assets/assets/model_update.py) once enough training pairs
were gained since the last fine-tune; `experiment_decision_sensor` hands the A/B test an update started to
`experiment_report` once every arm has the sample size its rule declared.
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
from rag_assets.assets.model_update import (
    EXPERIMENT,
    EXPERIMENT_TAG,
    GainedPairs,
    ModelUpdateResource,
    gained_pairs,
)
from rag_assets.assets.promotion import REJUDGE_RERANKER
from rag_assets.jobs import (
    UPDATE_JOBS,
    evaluation_job,
    experiment_decision_job,
    index_documents_job,
    remove_documents_job,
    reranker_job,
)
from rag_assets.maintenance import awaiting_dagster_retry
from rag_assets.partitions import documents_partitions
from rag_assets.reporting import latest_metadata
from rag_assets.resources import CatalogResource, EmbedderResource, EvaluationResource, SourcesResource
from rag_core.catalog import CatalogEntry
from rag_core.documents import SourceUnit
from rag_core.errors import Refusal
from rag_core.experiments import RUNNING, ExperimentStore, observations, samples_of
from rag_core.ids import content_hash
from rag_core.querylog import ServingDatabase

PartitionRequest = AddDynamicPartitionsRequest | DeleteDynamicPartitionsRequest
CHANGE_TAG = "rag/change"  # the run key of a change, on every attempt at it (Dagster's retries copy it)
ATTEMPT_TAG = "rag/attempt"
RETRYABLE = (DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED)
IN_FLIGHT = [
    DagsterRunStatus.QUEUED,
    DagsterRunStatus.NOT_STARTED,
    DagsterRunStatus.STARTING,
    DagsterRunStatus.STARTED,
    DagsterRunStatus.CANCELING,
]


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


@sensor(job=reranker_job, minimum_interval_seconds=60, default_status=DefaultSensorStatus.RUNNING)
def rerank_after_promotion_sensor(context: SensorEvaluationContext) -> RunRequest | SkipReason:
    """After a promotion that replaced a build served with a reranker, that reranker judged on the new build
    (`reranker_model` with `judge`: its weight picked on the questions it held out, its gain proven on the
    evaluation split) — so a model update or a rebuild does not end reranking for good."""
    records = context.instance.fetch_materializations(AssetKey("promoted_index"), limit=1).records
    if not records:
        return SkipReason("nothing has been promoted yet")
    latest = records[0]
    if context.cursor and int(context.cursor) >= latest.storage_id:
        return SkipReason(f"no promotion since event {context.cursor}")
    context.update_cursor(str(latest.storage_id))
    materialization = latest.asset_materialization
    entry = materialization.metadata.get(REJUDGE_RERANKER) if materialization else None
    if entry is None or not str(entry.value):
        return SkipReason("the latest promotion left no reranker behind")
    reranker = str(entry.value)
    context.log.info(f"judging {reranker} on the newly served build")
    return RunRequest(
        run_key=f"rejudge:{latest.storage_id}",
        run_config={"ops": {"reranker_model": {"config": {"judge": reranker}}}},
        tags={"rag/rejudge": reranker},
    )


def update_blocked(instance: DagsterInstance, model_update: ModelUpdateResource, evaluation: EvaluationResource) -> str:
    """Why no model update may start now ("" = it may): one is in flight, or, when updates end in an A/B
    test, an experiment is running (only one runs at a time, so the new one would be refused)."""
    for job in UPDATE_JOBS.values():
        if instance.get_runs_count(RunsFilter(job_name=job.name, statuses=IN_FLIGHT)):
            return f"a {job.name} run is in flight"
    if model_update.action != EXPERIMENT:
        return ""
    database = ServingDatabase(evaluation.serving_db_url)
    try:
        running = ExperimentStore(database.engine).running()
    finally:
        database.close()
    return f"experiment {running.name} is running: the next update waits for its decision" if running else ""


def update_request(
    model_update: ModelUpdateResource, reason: str, gained: GainedPairs, run_key: str | None
) -> RunRequest:
    return RunRequest(
        job_name=UPDATE_JOBS[model_update.action].name,
        run_key=run_key,
        run_config=model_update.run_config(gained),
        tags=model_update.tags(reason, gained),
    )


@sensor(jobs=list(UPDATE_JOBS.values()), minimum_interval_seconds=300, default_status=DefaultSensorStatus.RUNNING)
def model_update_sensor(
    context: SensorEvaluationContext, model_update: ModelUpdateResource, evaluation: EvaluationResource
) -> RunRequest | SkipReason:
    """A model update once RAG_AUTO_UPDATE_MIN_PAIRS training pairs were gained since the last fine-tune.

    The run key is the last fine-tune plus how many thresholds' worth of pairs have accumulated since: a
    tick never requests the same update twice, an update that fails before its fine-tune is tried again only
    after another threshold of pairs (not at every new one), and a finished fine-tune starts the count anew."""
    if not model_update.min_pairs:
        return SkipReason("off: RAG_AUTO_UPDATE_MIN_PAIRS=0")
    if blocked := update_blocked(context.instance, model_update, evaluation):
        return SkipReason(blocked)
    gained = gained_pairs(context.instance, evaluation, model_update.synthetic_questions)
    if gained.total < model_update.min_pairs:
        return SkipReason(f"{gained.describe()}; an update starts at {model_update.min_pairs}")
    since = f"{gained.since:%Y%m%dT%H%M%S.%f}" if gained.since else "never"
    context.log.info(f"{gained.describe()}: starting a model update ({model_update.action})")
    return update_request(model_update, "pairs", gained, f"update:{since}:{gained.total // model_update.min_pairs}")


@sensor(job=experiment_decision_job, minimum_interval_seconds=600, default_status=DefaultSensorStatus.RUNNING)
def experiment_decision_sensor(
    context: SensorEvaluationContext, evaluation: EvaluationResource
) -> RunRequest | SkipReason:
    """`experiment_report` for the A/B test the latest model update started, once every arm has the sample
    size its rule declared (earlier reports could only say "continue"), and again whenever feedback was added
    since; the report stops the experiment once it decides, promoting the candidate if it ships."""
    name = str(latest_metadata(context.instance, "update_experiment").get("experiment", ""))
    if not name:
        return SkipReason("no model update has started an A/B test")
    database = ServingDatabase(evaluation.serving_db_url)
    try:
        experiment = ExperimentStore(database.engine).get(name)
        seen = observations(database.engine, experiment) if experiment.status == RUNNING else {}
    except Refusal as gone:  # deleted by hand
        return SkipReason(str(gone))
    finally:
        database.close()
    if experiment.status != RUNNING:
        return SkipReason(f"experiment {name} is {experiment.status}")
    rule = experiment.rule
    counts = {arm: samples_of(rule.primary_metric, observed) for arm, observed in seen.items()}
    if min(counts.values()) < rule.min_samples:
        return SkipReason(f"{name}: {counts} {rule.primary_metric} observations; each arm needs {rule.min_samples}")
    if context.instance.get_runs_count(RunsFilter(tags={EXPERIMENT_TAG: name}, statuses=IN_FLIGHT)):
        return SkipReason(f"a report of {name} is in flight")
    return RunRequest(
        run_key=f"decide:{name}:{sum(counts.values())}",
        run_config={"ops": {"experiment_report": {"config": {"experiment": name, "stop_when_decided": True}}}},
        tags={EXPERIMENT_TAG: name},
    )
