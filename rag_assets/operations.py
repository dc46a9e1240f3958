"""Operations: alerting on failed runs, and the metrics the asset graph exports for Prometheus.

`run_failure_alert` logs every failed run and, with RAG_ALERT_WEBHOOK_URL, POSTs it (Slack-compatible
`text` plus the details). `rag metrics` serves index freshness, size, the promoted build's nDCG@10 and
the failed-run count, read on each scrape from the Dagster instance and Milvus.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

from dagster import (
    AssetKey,
    ConfigurableResource,
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


@run_failure_sensor(default_status=DefaultSensorStatus.RUNNING, minimum_interval_seconds=30)
def run_failure_alert(context: RunFailureSensorContext, alerts: AlertsResource) -> None:
    run = context.dagster_run
    reason = context.failure_event.message or "no message"
    text = f"Dagster run {run.run_id} of {run.job_name} failed: {reason}"
    log.error(text, extra={"run_id": run.run_id, "job": run.job_name})
    outcome = alerts.send(text, {"run_id": run.run_id, "job": run.job_name, "tags": dict(run.tags)})
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
