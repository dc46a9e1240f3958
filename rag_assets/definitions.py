"""The code location `dagster dev -w workspace.yaml` loads."""

from __future__ import annotations

from dagster import Definitions, json_console_logger

from rag_assets.assets.evaluation import EVALUATION_ASSETS
from rag_assets.assets.indexing import INDEX_ASSETS
from rag_assets.assets.models import MODEL_ASSETS
from rag_assets.assets.search import search_index
from rag_assets.experiments import experiment_grid_job
from rag_assets.maintenance import index_reconciliation, remove_documents_job
from rag_assets.operations import AlertsResource, run_failure_alert
from rag_assets.resources import build_resources
from rag_assets.schedules import (
    candidate_job,
    evaluation_job,
    finetune_and_promote_job,
    nightly_reconcile,
    promote_job,
    reconcile_job,
    search_index_job,
    weekly_full_eval,
)
from rag_assets.sensors import documents_sensor, eval_after_reindex_sensor, index_documents_job
from rag_core.settings import Settings, get_settings


def build_definitions(settings: Settings) -> Definitions:
    return Definitions(
        assets=[*INDEX_ASSETS, search_index, index_reconciliation, *EVALUATION_ASSETS, *MODEL_ASSETS],
        jobs=[
            index_documents_job,
            remove_documents_job,
            reconcile_job,
            evaluation_job,
            promote_job,
            candidate_job,
            finetune_and_promote_job,
            experiment_grid_job,
            search_index_job,
        ],
        sensors=[documents_sensor, eval_after_reindex_sensor, run_failure_alert],
        schedules=[nightly_reconcile, weekly_full_eval],
        resources={**build_resources(settings), "alerts": AlertsResource(webhook_url=settings.alert_webhook_url)},
        # Production: one JSON object per line, each carrying the run id (RAG_LOG_FORMAT=json).
        loggers={"console": json_console_logger} if settings.log_format == "json" else None,
    )


defs = build_definitions(get_settings())
