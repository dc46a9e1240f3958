"""The reconcile plan: which drift between folder, partitions, catalog and Milvus gets which repair."""

from rag_core.indexing import plan_reconcile


def test_reconcile_plan_finds_every_kind_of_drift():
    plan = plan_reconcile(
        source_keys={"a", "b", "c", "q"},
        partitions={"a", "b", "z"},
        catalog_chunks={"a": 2, "b": 3, "q": None, "gone": 1},
        milvus_rows={"a": 2, "b": 1, "orphan": 4},
    )
    assert plan.add_partitions == ["c", "q"]
    assert plan.delete_partitions == ["z"]
    assert plan.orphan_sources == ["orphan"]
    assert plan.reindex == ["b"]
    assert plan.forget == ["gone"]
    assert not plan.is_clean
    assert plan_reconcile({"a"}, {"a"}, {"a": 1}, {"a": 1}).is_clean


def test_files_the_sensor_saw_but_no_run_indexes_are_requeued():
    plan = plan_reconcile(
        source_keys={"failed", "running", "new"},
        partitions={"failed", "running"},
        catalog_chunks={},
        milvus_rows={},
        unindexed={"failed", "new"},  # "running" has a live run, so the caller leaves it out
    )
    assert plan.requeue == ["failed"]  # "new" has no partition yet: the sensor's next tick requests it
    assert plan.summary()["requeue"] == 1 and not plan.is_clean
