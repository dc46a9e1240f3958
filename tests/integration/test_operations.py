"""Operations on a real Dagster instance: a failed run is logged and posted to the alert webhook (a real
HTTP server on loopback), and the index metrics exporter reads the instance and Milvus on each scrape."""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from dagster import DagsterInstance, build_run_status_sensor_context
from prometheus_client import CollectorRegistry, generate_latest

from rag_assets.cli import index
from rag_assets.definitions import build_definitions
from rag_assets.operations import AlertsResource, IndexMetricsCollector, run_failure_alert
from rag_core.settings import Settings


class Webhook(BaseHTTPRequestHandler):
    received: list[dict] = []

    def do_POST(self) -> None:  # noqa: N802 - the http.server hook name
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Webhook.received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def webhook_url():
    server = HTTPServer(("127.0.0.1", 0), Webhook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    Webhook.received.clear()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook"
    server.shutdown()


def test_a_failed_run_is_logged_and_posted_to_the_webhook(settings: Settings, webhook_url: str, caplog) -> None:
    instance = DagsterInstance.ephemeral()
    failed = (
        build_definitions(settings)
        .resolve_job_def("experiment_grid_job")
        .execute_in_process(
            instance=instance,
            run_config={"ops": {"experiment_grid": {"config": {"chunk_sizes": [[8, 9]]}}}},
            raise_on_error=False,
        )
    )
    assert not failed.success
    failure_event = next(event for event in failed.all_events if event.event_type_value == "PIPELINE_FAILURE")
    context = build_run_status_sensor_context(
        sensor_name="run_failure_alert",
        dagster_event=failure_event,
        dagster_instance=instance,
        dagster_run=failed.dagster_run,
        resources={"alerts": AlertsResource(webhook_url=webhook_url)},
    ).for_run_failure()
    with caplog.at_level(logging.ERROR, logger="rag_assets.alerts"):
        run_failure_alert(context)
    assert f"Dagster run {failed.run_id} of experiment_grid_job failed" in caplog.text
    (alert,) = Webhook.received
    assert alert["run_id"] == failed.run_id and alert["job"] == "experiment_grid_job"
    assert alert["text"].startswith(f"Dagster run {failed.run_id}")


@pytest.mark.slow
def test_index_metrics_follow_the_instance_and_milvus(settings: Settings) -> None:
    instance = DagsterInstance.ephemeral()
    registry = CollectorRegistry()
    registry.register(IndexMetricsCollector(instance, settings.resolved_milvus_uri, "", settings.collection_alias))

    def scrape() -> dict[str, float]:
        lines = generate_latest(registry).decode().splitlines()
        return {line.split(" ")[0].split("{")[0]: float(line.rsplit(" ", 1)[1]) for line in lines if line[:1] != "#"}

    before = scrape()
    assert before["rag_index_up"] == 0.0 and before["rag_index_last_success_timestamp_seconds"] == 0.0
    summary = index(settings, instance=instance)
    after = scrape()
    assert after["rag_index_up"] == 1.0 and after["rag_index_rows"] == summary["vectors"] > 0
    assert after["rag_index_last_success_timestamp_seconds"] > 0 and after["rag_dagster_failed_runs_total"] == 0
