"""A document never stays pending forever: a run that failed on a transient lock, or never started, is
requested again by the documents sensor after its backoff, and `rag reconcile` requests again at once every
file left unindexed with no queued or running run. Real Dagster instance, runs, Milvus Lite and catalog."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from dagster import AssetKey, DagsterInstance, DagsterRunStatus, SensorResult, SkipReason, instance_for_test
from dagster._core.storage.tags import PARTITION_NAME_TAG

from rag_assets.definitions import build_definitions
from rag_assets.resources import build_resources
from rag_assets.sensors import ATTEMPT_TAG, CHANGE_TAG
from rag_core.catalog import INDEXED, PENDING
from rag_core.ids import source_key
from rag_core.settings import Settings
from tests.conftest import FIXTURES
from tests.integration.pipeline_helpers import apply_sensor_result, sensor_tick

pytestmark = pytest.mark.slow


@pytest.fixture
def instance(settings: Settings) -> Iterator[DagsterInstance]:
    settings.resolved_dagster_home.mkdir(parents=True)
    with instance_for_test(temp_dir=str(settings.resolved_dagster_home)) as instance:
        yield instance


def _folder(tmp_path: Path, *names: str) -> Path:
    """A documents folder of a few fixture files, so that each run indexes little."""
    folder = tmp_path / "few-documents"
    folder.mkdir()
    for name in names:
        shutil.copy(FIXTURES / "corpus" / name, folder / name)
    return folder


def _add_partitions(instance: DagsterInstance, tick: SensorResult) -> None:
    for request in tick.dynamic_partitions_requests:
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))


def _status(settings: Settings, key: str) -> str | None:
    entry = build_resources(settings)["catalog"].get().entries([key]).get(key)
    return entry.status if entry else None


@contextmanager
def _lite_file_held(settings: Settings) -> Iterator[None]:
    """Another process holds the Milvus Lite file (a `rag index` elsewhere, a stuck server) until the block ends."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import sys; from pymilvus import MilvusClient; client = MilvusClient({settings.resolved_milvus_uri!r}); "
            "print('ready', flush=True); sys.stdin.readline(); client.close()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "ready"
        yield
    finally:
        holder.communicate("let go\n", timeout=120)


def test_a_run_failed_on_a_locked_lite_file_is_requested_again_after_the_backoff(settings, instance, tmp_path):
    # A short patience for the lock, so the held file fails the run at once; an hour of backoff at first.
    backing_off = settings.model_copy(
        update={
            "documents_dir": _folder(tmp_path, "getting-started.md"),
            "milvus_lock_timeout_s": 1,
            "index_retry_delay_s": 3600,
        }
    )
    key = source_key("getting-started.md")
    tick = sensor_tick(backing_off, instance)
    (request,) = tick.run_requests
    assert request.tags[CHANGE_TAG] == request.run_key and request.tags[ATTEMPT_TAG] == "0"
    _add_partitions(instance, tick)
    job = build_definitions(backing_off).resolve_job_def("index_documents_job")
    with _lite_file_held(backing_off):
        failed = job.execute_in_process(partition_key=key, tags=request.tags, instance=instance, raise_on_error=False)
    assert not failed.success
    (failure,) = [event for event in failed.all_events if event.is_step_failure]
    assert "stayed locked by another process" in failure.event_specific_data.error.cause.message
    assert _status(backing_off, key) is None  # pending: nothing indexed yet

    # Its run key is used, so before the fix every later tick skipped it. Now: a wait, then a new attempt.
    waiting = sensor_tick(backing_off, instance)
    assert isinstance(waiting, SkipReason) and "backing off" in waiting.skip_message
    due = backing_off.model_copy(update={"index_retry_delay_s": 0, "milvus_lock_timeout_s": 30})
    (retry,) = sensor_tick(due, instance).run_requests
    assert retry.partition_key == key and retry.run_key == f"{request.run_key}:attempt1"
    assert retry.tags[CHANGE_TAG] == request.run_key and retry.tags[ATTEMPT_TAG] == "1"
    apply_sensor_result(due, instance, SensorResult(run_requests=[retry]))
    assert _status(due, key) == INDEXED
    assert isinstance(sensor_tick(due, instance), SkipReason)


def _reconcile(settings: Settings, instance: DagsterInstance) -> dict[str, object]:
    result = build_definitions(settings).resolve_job_def("reconcile_job").execute_in_process(instance=instance)
    assert result.success
    materialization = instance.get_latest_materialization_event(AssetKey("index_reconciliation"))
    return {key: value.value for key, value in materialization.asset_materialization.metadata.items()}


def test_reconcile_requests_again_a_document_whose_run_never_started(settings, instance, tmp_path):
    patient = settings.model_copy(
        update={
            "documents_dir": _folder(tmp_path, "getting-started.md", "release-notes.txt"),
            "index_retry_delay_s": 3600,  # the sensor alone would wait an hour
        }
    )
    lost, running = source_key("getting-started.md"), source_key("release-notes.txt")
    tick = sensor_tick(patient, instance)
    requests = {request.partition_key: request for request in tick.run_requests}
    _add_partitions(instance, tick)
    job = build_definitions(patient).resolve_job_def("index_documents_job")
    # What the daemon records when a run's code server does not answer in time: the run failed to start.
    never_started = instance.create_run_for_job(
        job, tags={**requests[lost].tags, PARTITION_NAME_TAG: lost}, status=DagsterRunStatus.STARTING
    )
    instance.report_run_failed(never_started, "the code server did not answer within 60 s")
    # The other file's run is under way: it is live, so reconcile leaves that file alone.
    instance.create_run_for_job(
        job, tags={**requests[running].tags, PARTITION_NAME_TAG: running}, status=DagsterRunStatus.STARTED
    )
    assert isinstance(sensor_tick(patient, instance), SkipReason)

    report = _reconcile(patient, instance)
    assert report["requeue"] == 1 and lost in report["report"] and running not in report["report"]
    assert report["clean"] is False
    assert _status(patient, lost) == PENDING and _status(patient, running) is None

    (again,) = sensor_tick(patient, instance).run_requests  # at once: no backoff after a repair
    assert again.partition_key == lost and again.run_key != requests[lost].run_key
    assert again.tags[ATTEMPT_TAG] == "0"
    apply_sensor_result(patient, instance, SensorResult(run_requests=[again]))
    assert _status(patient, lost) == INDEXED
    assert _reconcile(patient, instance)["requeue"] == 0  # the running run still covers the other file
