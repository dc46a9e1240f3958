"""The code location `dagster dev -w workspace.yaml` loads."""

from __future__ import annotations

from dagster import Definitions

from rag_assets.assets.indexing import INDEX_ASSETS
from rag_assets.maintenance import index_reconciliation, remove_documents_job
from rag_assets.resources import build_resources
from rag_assets.schedules import nightly_reconcile, reconcile_job
from rag_assets.sensors import documents_sensor, index_documents_job
from rag_core.settings import Settings, get_settings


def build_definitions(settings: Settings) -> Definitions:
    return Definitions(
        assets=[*INDEX_ASSETS, index_reconciliation],
        jobs=[index_documents_job, remove_documents_job, reconcile_job],
        sensors=[documents_sensor],
        schedules=[nightly_reconcile],
        resources=build_resources(settings),
    )


defs = build_definitions(get_settings())
