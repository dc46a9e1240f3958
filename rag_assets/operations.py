"""Operations: alerting on failed runs, and the metrics the asset graph exports for Prometheus.

`run_failure_alert` logs every failed run and, with RAG_ALERT_WEBHOOK_URL, POSTs it (Slack-compatible
`text` plus the details) with a reason a person can act on: a failed check's recorded reason (the quality
gate refusing a candidate), a step's `Failure` description, else its error. `rag metrics` serves index
freshness, size, the promoted build's nDCG@10 and the failed-run count, read on each scrape from the Dagster
instance and Milvus.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

from dagster import (
    AssetKey,
    ConfigurableResource,
    DagsterEventType,
    DagsterInstance,
    DagsterRunStatus,
    DefaultSensorStatus,
    RunFailureSensorContext,
    RunsFilter,
    run_failure_sensor,
)

log = logging.getLogger("rag_assets.alerts")


class AlertsResource(ConfigurableResource):
    webhook_url: str = ""

    def send(self, text: str, details: dict[str, object]) -> str:
        if not self.webhook_url:
            return "no webhook configured"
        import httpx

        try:
            response = httpx.post(self.webhook_url, json={"text": text, **details}, timeout=5)
            return f"webhook answered {response.status_code}"
        except httpx.HTTPError as error:  # an alert channel being down must not hide the alert itself
            return f"webhook failed: {error}"


def failure_reasons(instance: DagsterInstance, run_id: str) -> list[str]:
    """Why a run failed, step by step: each failed asset check's recorded `reason` (a blocking check fails its
    step with a generic error, so the reason lives in the check's metadata), each step's dagster `Failure`
    description, else the step's error message."""
    reasons: list[str] = []
    explaining = {DagsterEventType.ASSET_CHECK_EVALUATION, DagsterEventType.STEP_FAILURE}
    for entry in instance.all_logs(run_id, of_type=explaining):
        event = entry.dagster_event
        if event is None:
            continue
        if event.event_type == DagsterEventType.ASSET_CHECK_EVALUATION:
            check = event.asset_check_evaluation_data
            if not check.passed:
                reason = check.metadata.get("reason")
                reasons.append(f"check {check.check_name}: {reason.value if reason else 'failed, no reason recorded'}")
            continue
        failure = event.step_failure_data
        if failure.user_failure_data is not None and failure.user_failure_data.description:
            reasons.append(f"{event.step_key}: {failure.user_failure_data.description}")
        elif failure.error is not None and failure.error.cls_name != "DagsterAssetCheckFailedError":
            reasons.append(f"{event.step_key}: {failure.error.message.strip()[:500]}")
    return reasons


@run_failure_sensor(default_status=DefaultSensorStatus.RUNNING, minimum_interval_seconds=30)
def run_failure_alert(context: RunFailureSensorContext, alerts: AlertsResource) -> None:
    run = context.dagster_run
    reasons = failure_reasons(context.instance, run.run_id)
    reason = "; ".join(reasons) or context.failure_event.message or "no message"
    text = f"Dagster run {run.run_id} of {run.job_name} failed: {reason}"
    log.error(text, extra={"run_id": run.run_id, "job": run.job_name})
    details = {"run_id": run.run_id, "job": run.job_name, "reasons": reasons, "tags": dict(run.tags)}
    outcome = alerts.send(text, details)
    context.log.info(f"alerted: {outcome}")


class IndexMetricsCollector:
    """Prometheus collector: everything is read when Prometheus scrapes, so no state can go stale."""

    def __init__(self, instance: DagsterInstance, milvus_uri: str, milvus_token: str, alias: str) -> None:
        self.instance = instance
        self.milvus_uri = milvus_uri
        self.milvus_token = milvus_token
        self.alias = alias

    def collect(self) -> Iterator[object]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        from rag_core.store import MilvusStore, milvus_client

        failed = CounterMetricFamily("rag_dagster_failed_runs", "Dagster runs that ended in failure")
        failed.add_metric([], self.instance.get_runs_count(RunsFilter(statuses=[DagsterRunStatus.FAILURE])))
        yield failed
        fresh = GaugeMetricFamily(
            "rag_index_last_success_timestamp_seconds", "When milvus_collection last materialized (unix time)"
        )
        records = self.instance.fetch_materializations(AssetKey("milvus_collection"), limit=1).records
        fresh.add_metric([], records[0].timestamp if records else 0.0)
        yield fresh
        rows = GaugeMetricFamily("rag_index_rows", "Rows in the served collection", labels=["collection"])
        ndcg = GaugeMetricFamily("rag_eval_ndcg_at_10", "nDCG@10 recorded when the served build was promoted")
        up = GaugeMetricFamily("rag_index_up", "1 when Milvus answers and the alias resolves")
        try:
            with milvus_client(self.milvus_uri, self.milvus_token, lock_timeout_s=5) as client:
                store = MilvusStore(client, self.alias)
                served = store.alias_target()
                if served:
                    rows.add_metric([served], store.count(served))
                    recorded = store.record(served).eval_ndcg_at_10
                    if recorded is not None:
                        ndcg.add_metric([], recorded)
            up.add_metric([], 1.0 if served else 0.0)
        except Exception as error:  # noqa: BLE001 - a scrape reports Milvus being down, it does not fail
            log.warning("index metrics: Milvus is not answering (%s)", error)
            up.add_metric([], 0.0)
        yield from (rows, ndcg, up)


def serve_metrics(
    instance: DagsterInstance, milvus_uri: str, milvus_token: str, alias: str, host: str, port: int
) -> None:
    from prometheus_client import CollectorRegistry, start_http_server

    registry = CollectorRegistry()
    registry.register(IndexMetricsCollector(instance, milvus_uri, milvus_token, alias))
    start_http_server(port, addr=host, registry=registry)
    log.info("index metrics on http://%s:%s/metrics", host, port)
    while True:
        time.sleep(3600)
