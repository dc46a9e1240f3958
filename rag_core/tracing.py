"""Each answer as an MLflow 3 trace: `answer` → `retrieve`, `generate`, with their inputs and outputs, in the
experiment `rag-answers` (the MLflow UI shows it under GenAI → Traces).

Off the request's critical path: nothing is traced while the request works. After the answer, the request
records its spans at once from the times it noted (a few in-memory objects), and MLflow's background
exporter writes them to the tracking store. `mlflow` (seconds to import) is loaded by `warm_up()`, which the
server runs in a background thread; answers before it finishes are not traced. Tracing never fails an
answer: an error is logged and the answer goes without a trace id.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rag_core.generation import Answer
from rag_core.pii import redact
from rag_core.retrieval import RetrievedChunk
from rag_core.settings import Settings
from rag_core.tracking import GENAI, Tracker

ANSWERS_EXPERIMENT = "rag-answers"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AnsweredQuery:
    """One answered question, and the wall-clock times (ns) its request noted: when it started, and when
    retrieval and generation started and ended."""

    query_id: str
    tenant: str
    question: str
    mode: str
    top_k: int
    index_version: str
    cached: bool
    chunks: Sequence[RetrievedChunk]
    answer: Answer
    started_ns: int
    retrieve_ns: tuple[int, int]
    generate_ns: tuple[int, int]


def _documents(chunks: Sequence[RetrievedChunk]) -> list[dict[str, Any]]:
    """The retrieved chunks as MLflow's retriever documents, so the UI lists them as such."""
    return [
        {
            "id": chunk.chunk_id,
            "page_content": chunk.text,
            "metadata": {
                "doc_uri": chunk.source,
                "doc_id": chunk.doc_id,
                "title": chunk.title,
                "score": chunk.score,
                "rank": rank,
            },
        }
        for rank, chunk in enumerate(chunks, 1)
    ]


class AnswerTracer:
    """Writes answers as traces to one tracking store. `record` returns the trace id (None when not ready)."""

    def __init__(self, tracker: Tracker, redact_pii: bool = False, experiment: str = ANSWERS_EXPERIMENT) -> None:
        self.tracker = tracker
        self.redact_pii = redact_pii
        self.experiment = experiment
        self.experiment_id = ""
        self.ready = threading.Event()
        self._mlflow: Any = None

    @classmethod
    def from_settings(cls, settings: Settings) -> AnswerTracer:
        return cls(Tracker.from_settings(settings), settings.redact_pii)

    def warm_up(self) -> None:
        """Import mlflow and resolve the experiment; until this returns, answers are not traced."""
        try:
            self.experiment_id = self.tracker.experiment_id(self.experiment, kind=GENAI)
            self._mlflow = self.tracker.mlflow()
            self.ready.set()
        except Exception as error:  # answers go on untraced; the reason is in the log once
            log.warning(
                "tracing is off: the MLflow store at %s failed (%s: %s) — fix MLFLOW_TRACKING_URI, or set "
                "RAG_TRACING=false to stop trying",
                self.tracker.uri,
                type(error).__name__,
                error,
            )

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.warm_up, name="tracing-warm-up", daemon=True)
        thread.start()
        return thread

    def url(self, trace_id: str) -> str:
        return self.tracker.trace_url(self.experiment_id, trace_id)

    def record(self, query: AnsweredQuery) -> str | None:
        if not self.ready.is_set():
            return None
        try:
            return self._record(query)
        except Exception:
            log.exception("tracing answer %s failed; the answer is served without a trace", query.query_id)
            return None

    def flush(self) -> None:
        """Wait until every recorded trace is in the tracking store."""
        if self._mlflow is not None:
            self._mlflow.flush_trace_async_logging()

    def _text(self, text: str) -> str:
        return redact(text)[0] if self.redact_pii and text else text

    def _record(self, query: AnsweredQuery) -> str:
        from mlflow.entities import SpanType

        mlflow, answer, question = self._mlflow, query.answer, self._text(query.question)
        root = mlflow.start_span_no_context(
            "answer",
            span_type=SpanType.CHAIN,
            inputs={"question": question, "mode": query.mode, "top_k": query.top_k},
            attributes={"query_id": query.query_id, "index_version": query.index_version, "cached": query.cached},
            tags={"rag.query_id": query.query_id, "rag.tenant": query.tenant},
            experiment_id=self.experiment_id,
            start_time_ns=query.started_ns,
        )
        retrieve = mlflow.start_span_no_context(
            "retrieve",
            span_type=SpanType.RETRIEVER,
            parent_span=root,
            inputs={"query": question, "mode": query.mode, "top_k": query.top_k},
            attributes={"cached": query.cached},
            start_time_ns=query.retrieve_ns[0],
        )
        retrieve.end(outputs=_documents(query.chunks), end_time_ns=query.retrieve_ns[1])
        generate = mlflow.start_span_no_context(
            "generate",
            span_type=SpanType.LLM,
            parent_span=root,
            inputs={"question": question, "passages": [chunk.chunk_id for chunk in query.chunks]},
            attributes={"model": answer.model},
            start_time_ns=query.generate_ns[0],
        )
        outputs = {
            "answer": self._text(answer.text),
            "citations": [query.chunks[n - 1].chunk_id for n in answer.citations if 0 < n <= len(query.chunks)],
            "model": answer.model,
            "degraded": answer.degraded,
            "reason": answer.reason,
        }
        generate.end(outputs=outputs, end_time_ns=query.generate_ns[1])
        root.end(outputs=outputs, end_time_ns=query.generate_ns[1])
        return root.trace_id
