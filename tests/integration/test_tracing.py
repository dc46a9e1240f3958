"""Answers as MLflow 3 traces (RAG_TRACING), through the real app on a real HTTP port over the served index,
read back from the real MLflow store; and the query log's `trace_id` column, added to tables created before
it existed, on SQLite and on the real PostgreSQL."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from rag_core.querylog import ServingDatabase, queries
from rag_core.tracking import GENAI, Tracker
from rag_serving.app import create_app
from tests.serving_server import ServerThread
from tests.support.waiting import wait_for

pytestmark = pytest.mark.slow
MLFLOW_UI = "http://mlflow.example:5000"
QUESTION = "what happens to the vectors when a file is deleted from the watched folder?"


@pytest.fixture(scope="module")
def traced(served) -> Iterator[tuple[ServerThread, Tracker]]:
    """A second app over the served index, with tracing on."""
    settings = served.settings.model_copy(update={"tracing": True, "mlflow_ui_url": MLFLOW_UI})
    server = ServerThread(create_app(settings)).start()
    try:
        yield server, Tracker.from_settings(settings)
    finally:
        server.stop()


def _stored_trace(tracker: Tracker, trace_id: str):
    """The trace once written whole: the exporter writes in the background, the spans before the trace's tags."""
    try:
        trace = tracker.client().get_trace(trace_id)
    except Exception:  # not written yet
        return None
    return trace if "rag.query_id" in trace.info.tags else None


def test_an_answer_is_a_trace_with_retrieve_and_generate_spans_linked_from_the_query_log(served, traced) -> None:
    server, tracker = traced
    with server.client(served.keys["default"]) as client:

        def traced_answer() -> dict | None:  # the first answers come before mlflow is imported: not traced
            body = client.post("/v1/query", json={"query": QUESTION, "top_k": 3}).raise_for_status().json()
            return body if body["trace_id"] else None

        answer = wait_for("an answer with a trace id", traced_answer, timeout_s=300, every_s=1)
        trace = wait_for("the trace in the MLflow store", lambda: _stored_trace(tracker, answer["trace_id"]), 120)

        spans = {span.name: span for span in trace.data.spans}
        assert set(spans) == {"answer", "retrieve", "generate"}
        root, retrieve, generate = spans["answer"], spans["retrieve"], spans["generate"]
        assert retrieve.parent_id == generate.parent_id == root.span_id and root.parent_id is None
        assert retrieve.inputs == {"query": QUESTION, "mode": "hybrid", "top_k": 3}
        assert [document["id"] for document in retrieve.outputs] == [s["chunk_id"] for s in answer["sources"]]
        assert retrieve.outputs[0]["page_content"] == answer["sources"][0]["text"]
        assert generate.inputs["question"] == root.inputs["question"] == QUESTION
        assert generate.outputs["answer"] == root.outputs["answer"] == answer["answer"]
        assert generate.outputs["model"] == answer["model"]
        assert retrieve.start_time_ns <= retrieve.end_time_ns <= generate.start_time_ns <= generate.end_time_ns
        assert trace.info.tags["rag.query_id"] == answer["query_id"] and trace.info.tags["rag.tenant"] == "default"
        experiment = tracker.client().get_experiment_by_name("rag-answers")
        assert trace.info.experiment_id == experiment.experiment_id
        assert experiment.tags["mlflow.experimentKind"] == GENAI

        retrieval = client.post("/v1/retrieve", json={"query": QUESTION}).raise_for_status().json()
        logged = client.get("/v1/logs", params={"text": QUESTION, "limit": 200}).raise_for_status().json()  # flushes
        trace_urls = {row["query_id"]: row["trace_url"] for row in logged["queries"]}
        assert trace_urls[answer["query_id"]] == (
            f"{MLFLOW_UI}/#/experiments/{experiment.experiment_id}/traces?selectedEvaluationId={answer['trace_id']}"
        )
        assert trace_urls[retrieval["query_id"]] is None  # a retrieval has no answer to trace
    engine = sa.create_engine(served.settings.resolved_serving_db_url)
    with engine.connect() as connection:
        stored = dict(connection.execute(sa.select(queries.c.query_id, queries.c.trace_id)).all())
    engine.dispose()
    assert stored[answer["query_id"]] == answer["trace_id"] and stored[retrieval["query_id"]] is None


def _old_query_log(url: str) -> None:
    """The query log as shipped before traces: rag_queries without trace_id, holding one row."""
    old = sa.MetaData()
    table = sa.Table("rag_queries", old, *(column.copy() for column in queries.columns if column.name != "trace_id"))
    engine = sa.create_engine(url)
    old.create_all(engine)
    row = {"query_id": "before-traces", "tenant": "default", "question": "old?", "mode": "hybrid", "top_k": 5}
    row |= {"chunk_ids": "[]", "timings_ms": "{}", "model": "m", "index_version": "1"}
    with engine.begin() as connection:
        connection.execute(table.insert().values(created_at=sa.func.now(), degraded=False, cached=False, **row))
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def old_log_url(request, tmp_path) -> str:
    url = (
        f"sqlite:///{tmp_path / 'serving.sqlite'}"
        if request.param == "sqlite"
        else request.getfixturevalue("postgres_database")
    )
    _old_query_log(url)
    return url


def test_an_existing_query_log_gains_the_trace_id_column(old_log_url: str) -> None:
    opened: list[ServingDatabase] = []
    errors: list[BaseException] = []

    def open_database() -> None:  # API workers start together: both add the column, neither fails
        try:
            opened.append(ServingDatabase(old_log_url))
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=open_database) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and len(opened) == 2
    database = opened[0]
    database.log_query(
        tenant="default", question="new?", mode="hybrid", top_k=5, index_version="1", query_id="after", trace_id="tr-1"
    )
    database.flush()
    with database.engine.connect() as connection:
        rows = dict(connection.execute(sa.select(queries.c.query_id, queries.c.trace_id)).all())
    assert rows == {"before-traces": None, "after": "tr-1"}
    for each in opened:
        each.close()
