"""Run retries: the embedded dagster.yaml `rag` writes turns Dagster's run retries on, the index jobs opt in,
and the documents sensor's own backoff doubles per failed attempt up to its cap."""

from __future__ import annotations

from pathlib import Path

import pytest
from dagster import DagsterInstance

from rag_assets.cli import EMBEDDED_DAGSTER_YAML, GENERATED_HEADER, prepare_dagster_home
from rag_assets.jobs import evaluation_job, index_documents_job, remove_documents_job
from rag_assets.sensors import RetryBackoff
from rag_core.settings import Settings


def test_the_backoff_doubles_per_failed_attempt_up_to_its_cap():
    backoff = RetryBackoff(delay_s=60, max_delay_s=600)
    assert [backoff.delay(failed) for failed in (1, 2, 3, 4, 5)] == [60, 120, 240, 480, 600]
    assert backoff.delay(10_000) == 600  # weeks of failures never overflow


def test_the_embedded_instance_retries_the_index_jobs_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))  # prepare_dagster_home points it at the home it writes
    home = prepare_dagster_home(Settings(data_dir=tmp_path / "data", dagster_home=tmp_path / "dagster"))
    instance = DagsterInstance.from_config(str(home))
    try:
        assert instance.run_retries_enabled and instance.run_retries_max_retries == 0
        assert instance.run_monitoring_enabled and instance.run_monitoring_start_timeout_seconds == 300
    finally:
        instance.dispose()
    for job in (index_documents_job, remove_documents_job):
        assert job.tags["dagster/max_retries"] == "2" and job.tags["dagster/retry_strategy"] == "FROM_FAILURE"
    assert "dagster/max_retries" not in evaluation_job.tags


def test_an_older_generated_dagster_yaml_is_brought_up_to_date_and_a_users_own_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    generated, own = tmp_path / "generated", tmp_path / "own"
    for home in (generated, own):
        home.mkdir()
    (generated / "dagster.yaml").write_text(f"{GENERATED_HEADER}: SQLite storage in this folder.\ntelemetry:\n")
    (own / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    prepare_dagster_home(Settings(dagster_home=generated))
    prepare_dagster_home(Settings(dagster_home=own))
    assert (generated / "dagster.yaml").read_text() == EMBEDDED_DAGSTER_YAML
    assert (own / "dagster.yaml").read_text() == "telemetry:\n  enabled: false\n"
