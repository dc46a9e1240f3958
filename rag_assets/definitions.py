"""The code location `dagster dev -w workspace.yaml` loads."""

from __future__ import annotations

from dagster import Definitions, json_console_logger

from rag_assets.assets.experiment_report import experiment_report
from rag_assets.assets.indexing import INDEX_ASSETS
from rag_assets.assets.model_update import ModelUpdateResource, update_experiment
from rag_assets.assets.models import MODEL_ASSETS
from rag_assets.assets.promotion import promoted_index
from rag_assets.assets.rag_eval import rag_eval_report
from rag_assets.assets.reranker import RERANKER_ASSETS
from rag_assets.assets.retrieval_eval import (
    index_rows_match_chunks,
    ndcg_within_margin_of_promoted,
    retrieval_eval_report,
)
from rag_assets.assets.search import search_index
from rag_assets.jobs import JOBS
from rag_assets.maintenance import index_reconciliation
from rag_assets.operations import AlertsResource, run_failure_alert
from rag_assets.resources import build_resources
from rag_assets.schedules import model_update_schedule, nightly_reconcile, weekly_full_eval
from rag_assets.sensors import (
    documents_sensor,
    eval_after_reindex_sensor,
    experiment_decision_sensor,
    model_update_sensor,
    rerank_after_promotion_sensor,
)
from rag_core.settings import Settings, get_settings


def build_definitions(settings: Settings) -> Definitions:
    return Definitions(
        assets=[
            *INDEX_ASSETS,
            search_index,
            index_reconciliation,
            retrieval_eval_report,
            promoted_index,
            rag_eval_report,
            *MODEL_ASSETS,
            *RERANKER_ASSETS,
            experiment_report,
            update_experiment,
        ],
        asset_checks=[ndcg_within_margin_of_promoted, index_rows_match_chunks],
        jobs=JOBS,
        sensors=[
            documents_sensor,
            eval_after_reindex_sensor,
            run_failure_alert,
            model_update_sensor,
            experiment_decision_sensor,
            rerank_after_promotion_sensor,
        ],
        schedules=[nightly_reconcile, weekly_full_eval, *model_update_schedule(settings)],
        resources={
            **build_resources(settings),
            "alerts": AlertsResource(webhook_url=settings.alert_webhook_url),
            "model_update": ModelUpdateResource.from_settings(settings),
        },
        # Production: one JSON object per line, each carrying the run id (RAG_LOG_FORMAT=json).
        loggers={"console": json_console_logger} if settings.log_format == "json" else None,
    )


defs = build_definitions(get_settings())
