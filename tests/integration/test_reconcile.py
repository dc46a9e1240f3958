"""The nightly reconcile repairs drift between the folder, the Dagster partitions, the catalog and Milvus."""

import pytest
from dagster import AssetKey, instance_for_test

from rag_assets.cli import index
from rag_assets.definitions import build_definitions
from rag_assets.resources import build_resources
from rag_core.ids import source_key
from tests.integration.pipeline_helpers import apply_sensor_result, sensor_tick, served_rows

pytestmark = pytest.mark.slow


def _reconcile(settings, instance) -> dict:
    result = build_definitions(settings).resolve_job_def("reconcile_job").execute_in_process(instance=instance)
    assert result.success
    materialization = instance.get_latest_materialization_event(AssetKey("index_reconciliation"))
    return {key: value.value for key, value in materialization.asset_materialization.metadata.items()}


def test_reconcile_repairs_every_kind_of_drift(settings):
    settings.resolved_dagster_home.mkdir(parents=True)
    with instance_for_test(temp_dir=str(settings.resolved_dagster_home)) as instance:
        index(settings, instance=instance)
        damaged = source_key("getting-started.md")
        with build_resources(settings)["milvus"].store() as store:
            collection = store.alias_target()
            store.delete_sources(collection, [damaged])  # rows lost behind Dagster's back
            store.upsert(
                collection,
                [
                    {
                        "chunk_id": "orphan#0:1",
                        "doc_id": "orphan",
                        "source_key": "orphan-file",
                        "tenant": "default",
                        "source": "orphan.md",
                        "title": "",
                        "text": "orphan",
                        "search_text": "orphan",
                        "position": 0,
                        "start_char": 0,
                        "end_char": 6,
                        "dense": [0.1] * 384,
                        "metadata": {},
                    }
                ],
            )
        instance.add_dynamic_partitions("documents", ["ghost-partition-00000000"])
        (settings.documents_dir / "unseen.md").write_text("# Unseen\n\nA file nobody told Dagster about.")

        report = _reconcile(settings, instance)
        assert report["add_partitions"] == 1 and report["delete_partitions"] == 1
        assert report["orphan_sources"] == 1 and report["reindex"] == 1 and report["clean"] is False
        assert "getting-started-md" in report["report"] and "ghost-partition" in report["report"]
        assert "ghost-partition-00000000" not in instance.get_dynamic_partitions("documents")
        assert source_key("unseen.md") in instance.get_dynamic_partitions("documents")
        assert "orphan-file" not in served_rows(settings)

        # the sensor re-indexes what reconcile marked, and the new file
        tick = sensor_tick(settings, instance)
        assert sorted(r.partition_key for r in tick.run_requests) == sorted([damaged, source_key("unseen.md")])
        apply_sensor_result(settings, instance, tick)
        assert damaged in served_rows(settings)
        assert _reconcile(settings, instance)["clean"] is True
