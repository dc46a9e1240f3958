"""The embedded profile never trips over itself: the evaluation job (what `eval_after_reindex_sensor` launches)
runs its steps in parallel processes on Dagster's default multiprocess executor while `rag index` writes the
same Milvus Lite file from another process, and everything succeeds with no configuration of the profile."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from dagster import DagsterEventType, DagsterInstance, DagsterRunStatus, RunsFilter

from rag_assets.cli import index
from rag_assets.jobs import evaluation_job
from rag_core.settings import Settings
from tests.conftest import FIXTURES
from tests.support.waiting import wait_for

pytestmark = pytest.mark.slow
EVALUATION_STEPS = {"retrieval_eval_report", "rag_eval_report"}
# A small evaluation, so the test stays short; the Milvus, search-engine and lock settings stay the defaults.
SMALL_EVALUATION = {
    "RAG_EVAL_MAX_QUERIES": "5",
    "RAG_RAG_EVAL_QUERIES": "1",
    "RAG_EVAL_MODES": '["hybrid"]',
    "RAG_EVAL_TUNE_FUSION": "false",
}


def _steps(instance: DagsterInstance, run_id: str, event_type: DagsterEventType) -> set[str]:
    return {event.step_key for event in instance.all_logs(run_id, of_type=event_type)}


def _times(instance: DagsterInstance, run_id: str, event_type: DagsterEventType) -> dict[str, float]:
    return {event.step_key: event.timestamp for event in instance.all_logs(run_id, of_type=event_type)}


def _evaluation_run_id(instance: DagsterInstance) -> str | None:
    runs = instance.get_runs(RunsFilter(job_name=evaluation_job.name), limit=1)
    return runs[0].run_id if runs else None


def test_evaluation_steps_and_an_index_run_work_at_once_on_the_embedded_defaults(tmp_path, monkeypatch):
    documents = tmp_path / "documents"
    documents.mkdir()
    for name in ("abstracts.jsonl", "getting-started.md"):  # SciFact abstracts: the bundled labels judge them
        shutil.copy(FIXTURES / "corpus" / name, documents / name)
    for variable, value in SMALL_EVALUATION.items():
        monkeypatch.setenv(variable, value)
    for variable in ("MILVUS_URI", "RAG_MILVUS_URI", "RAG_SEARCH_ENGINE", "RAG_MILVUS_LOCK_TIMEOUT_S"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))  # restored after; `rag` points it at its home
    settings = Settings(data_dir=tmp_path / "data", documents_dir=documents, dagster_home=tmp_path / "dagster")
    first = index(settings)
    environment = {
        **os.environ,
        "RAG_DATA_DIR": str(settings.data_dir),
        "RAG_DOCUMENTS_DIR": str(documents),
        "DAGSTER_HOME": str(settings.resolved_dagster_home),
        "REDIS_URL": "",
    }
    # As `dagster dev` launches it: the job's default (multiprocess) executor, each step its own process.
    evaluation = subprocess.Popen(
        [
            Path(sys.executable).with_name("dagster"),
            "job",
            "execute",
            "-m",
            "rag_assets.definitions",
            "-j",
            "evaluation_job",
        ],
        env=environment,
        cwd=Path(__file__).resolve().parents[2],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    instance = DagsterInstance.from_config(str(settings.resolved_dagster_home))
    try:
        run_id = wait_for("the evaluation run starts", lambda: _evaluation_run_id(instance), timeout_s=300, every_s=1)
        both_started = wait_for(
            "both evaluation steps run",
            lambda: _steps(instance, run_id, DagsterEventType.STEP_START) >= EVALUATION_STEPS,
            timeout_s=300,
            every_s=0.5,
        )
        assert both_started
        assert instance.get_run_by_id(run_id).status == DagsterRunStatus.STARTED  # the index run starts meanwhile
        (documents / "otters.md").write_text("# Otters\n\nSea otters hold hands while they sleep in kelp forests.")
        second = index(settings)  # another process writes the Lite file while the evaluation reads the index
        assert second["documents"] == first["documents"] + 1
        _, errors = evaluation.communicate(timeout=1200)
        assert evaluation.returncode == 0, errors[-3000:]
        assert instance.get_run_by_id(run_id).status == DagsterRunStatus.SUCCESS
        assert _steps(instance, run_id, DagsterEventType.STEP_SUCCESS) >= EVALUATION_STEPS
        # The two steps ran side by side (each in its process), not one after the other.
        started = _times(instance, run_id, DagsterEventType.STEP_START)
        succeeded = _times(instance, run_id, DagsterEventType.STEP_SUCCESS)
        assert max(started[step] for step in EVALUATION_STEPS) < min(succeeded[step] for step in EVALUATION_STEPS)
    finally:
        if evaluation.poll() is None:
            evaluation.kill()
            evaluation.wait()
        instance.dispose()
