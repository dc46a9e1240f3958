"""Prometheus metrics of one app instance (its own registry, so tests can build many apps)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

STAGE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "rag_requests_total",
            "HTTP requests by route and status",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "rag_request_seconds",
            "HTTP request latency by route",
            ["route"],
            buckets=STAGE_BUCKETS,
            registry=self.registry,
        )
        self.stage = Histogram(
            "rag_stage_seconds",
            "Latency per pipeline stage (embed, search, generate)",
            ["stage"],
            buckets=STAGE_BUCKETS,
            registry=self.registry,
        )
        self.cache = Counter(
            "rag_cache_requests_total",
            "Cache lookups by cache and result",
            ["cache", "result"],
            registry=self.registry,
        )
        self.index = Gauge(
            "rag_index_info",
            "The index version served (value 1)",
            ["collection", "index_version"],
            registry=self.registry,
        )
        self.index_rows = Gauge("rag_index_rows", "Rows in the served collection", registry=self.registry)
        self.degraded = Counter(
            "rag_degraded_answers_total", "Answers that fell back to sources", registry=self.registry
        )
        self.screened = Counter(
            "rag_injection_screened_total",
            "Retrieved passages dropped or flagged, and questions flagged, by the injection screen",
            ["target", "action"],
            registry=self.registry,
        )
        # A/B experiments (rag_core.experiments): per arm, what the experiment_report asset decides on.
        self.arm_requests = Counter(
            "rag_experiment_requests_total",
            "Requests served by an A/B experiment's arm",
            ["experiment", "arm", "route"],
            registry=self.registry,
        )
        self.arm_retrieval = Histogram(
            "rag_experiment_retrieval_seconds",
            "Retrieval latency (embed + search + rerank) per A/B arm",
            ["experiment", "arm"],
            buckets=STAGE_BUCKETS,
            registry=self.registry,
        )
        self.arm_degraded = Counter(
            "rag_experiment_degraded_answers_total",
            "Answers of an A/B arm that fell back to sources",
            ["experiment", "arm"],
            registry=self.registry,
        )
        self.arm_feedback = Counter(
            "rag_experiment_feedback_total",
            "Feedback on an A/B arm's queries: kind relevant / irrelevant (judgements) or rated",
            ["experiment", "arm", "kind"],
            registry=self.registry,
        )
        self.arm_rating = Counter(
            "rag_experiment_rating_sum_total",
            "The sum of an A/B arm's ratings (÷ rag_experiment_feedback_total{kind=\"rated\"} = mean rating)",
            ["experiment", "arm"],
            registry=self.registry,
        )
