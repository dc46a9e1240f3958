"""The experiment grid (one MLflow run per model × chunking × mode) and the automation around evaluation:
the eval-after-reindex sensor and the weekly full evaluation, on a real instance, Milvus Lite and MLflow."""

from __future__ import annotations

import shutil

import pytest
from dagster import DagsterInstance, RunRequest, SkipReason, build_schedule_context, build_sensor_context

from rag_assets.cli import index
from rag_assets.definitions import build_definitions
from rag_assets.resources import build_resources
from rag_core.models import BUNDLED_MODEL
from rag_core.settings import Settings
from rag_core.tracking import Tracker
from tests.conftest import FIXTURES
from tests.integration.pipeline_helpers import write_fixture_dataset

pytestmark = pytest.mark.slow


@pytest.fixture
def grid_settings(tmp_path) -> Settings:
    shutil.copytree(FIXTURES / "corpus", tmp_path / "documents")
    return Settings(
        data_dir=tmp_path / "data",
        documents_dir=tmp_path / "documents",
        dagster_home=tmp_path / "dagster",
        milvus_uri="",
        catalog_url="",
        mlflow_tracking_uri="",
        eval_dataset_dir=write_fixture_dataset(tmp_path / "dataset"),
    )


def test_grid_logs_one_mlflow_run_per_combination_and_leaves_no_collections(grid_settings: Settings) -> None:
    instance = DagsterInstance.ephemeral()
    result = (
        build_definitions(grid_settings)
        .resolve_job_def("experiment_grid_job")
        .execute_in_process(
            instance=instance,
            run_config={
                "ops": {
                    "experiment_grid": {
                        "config": {
                            "models": [BUNDLED_MODEL],
                            "modes": ["bm25", "dense"],
                            "chunk_sizes": [[256, 32], [64, 8]],
                        }
                    }
                }
            },
        )
    )
    assert result.success
    rows = result.output_for_node("experiment_grid")
    assert {(row["chunking"], row["mode"]) for row in rows} == {
        ("tokens256-overlap32-docs-stem", "bm25"),
        ("tokens256-overlap32-docs-stem", "dense"),
        ("tokens64-overlap8-docs-stem", "bm25"),
        ("tokens64-overlap8-docs-stem", "dense"),
    }
    assert all(0.0 <= row["ndcg@10"] <= 1.0 for row in rows)
    runs = Tracker.from_settings(grid_settings).runs("retrieval-grid")
    assert sorted((run.data.params["chunking"], run.data.params["mode"]) for run in runs) == sorted(
        (row["chunking"], row["mode"]) for row in rows
    )
    assert all(float(run.data.params["chunks"]) > 0 and "ndcg_at_10" in run.data.metrics for run in runs)
    with build_resources(grid_settings)["milvus"].store() as store:
        assert store.client.list_collections() == []  # scratch builds are dropped; nothing was published


def test_bad_grid_config_is_refused_with_the_fix(grid_settings: Settings) -> None:
    result = (
        build_definitions(grid_settings)
        .resolve_job_def("experiment_grid_job")
        .execute_in_process(
            instance=DagsterInstance.ephemeral(),
            run_config={"ops": {"experiment_grid": {"config": {"chunk_sizes": [[64, 64]]}}}},
            raise_on_error=False,
        )
    )
    assert not result.success
    (failure,) = [event for event in result.all_events if event.is_step_failure]
    assert "0 ≤ overlap < max" in failure.event_specific_data.error.cause.message


def test_eval_sensor_requests_one_run_per_index_change_and_weekly_eval_is_full(grid_settings: Settings) -> None:
    instance = DagsterInstance.ephemeral()
    definitions = build_definitions(grid_settings)
    sensor = definitions.resolve_sensor_def("eval_after_reindex_sensor")

    def tick(cursor: str | None):
        context = build_sensor_context(instance=instance, cursor=cursor, definitions=definitions)
        return sensor(context), context.cursor

    result, cursor = tick(None)
    assert isinstance(result, SkipReason)
    index(grid_settings, instance=instance)
    result, cursor = tick(cursor)
    assert isinstance(result, RunRequest) and result.run_key.startswith("eval-after:")
    again, _ = tick(cursor)
    assert isinstance(again, SkipReason)  # no index change since: no second evaluation

    schedule = definitions.resolve_schedule_def("weekly_full_eval")
    assert schedule.cron_schedule == "0 4 * * 0" and schedule.job_name == "evaluation_job"
    (request,) = schedule.evaluate_tick(build_schedule_context(instance=instance)).run_requests
    assert request.run_config["ops"]["retrieval_eval_report"]["config"]["max_queries"] == 0  # every query
    evaluation = definitions.resolve_job_def(schedule.job_name).execute_in_process(
        instance=instance, run_config=request.run_config
    )
    assert evaluation.success
