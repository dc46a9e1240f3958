"""A fresh build evaluated as users get it: `rag index` of the settings' documents, then the real
retrieval_eval_report asset, on a Dagster instance on disk of its own."""

from __future__ import annotations

import logging

from dagster import instance_for_test, materialize

from rag_assets.assets.retrieval_eval import retrieval_eval_report
from rag_assets.cli import index
from rag_assets.resources import build_resources
from rag_core.settings import Settings


def index_and_evaluate(settings: Settings) -> tuple[dict[str, object], list[str]]:
    """(the report's metadata as plain values, the warnings its run logged)."""
    settings.resolved_dagster_home.mkdir(parents=True, exist_ok=True)
    with instance_for_test(temp_dir=str(settings.resolved_dagster_home)) as instance:
        index(settings, instance=instance)
        result = materialize([retrieval_eval_report], resources=build_resources(settings), instance=instance)
        assert result.success
        (materialization,) = result.asset_materializations_for_node("retrieval_eval_report")
        warnings = [event.message for event in instance.all_logs(result.run_id) if event.level == logging.WARNING]
    return {key: value.value for key, value in materialization.metadata.items()}, warnings
