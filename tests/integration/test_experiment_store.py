"""A/B experiments in the serving database, on SQLite and on the real PostgreSQL: the lifecycle, one running
experiment at a time, the query-log columns added to an existing table, and per-arm metrics joined from the
query log and feedback."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from rag_core.errors import Refusal
from rag_core.experiment_rule import DecisionRule
from rag_core.experiments import (
    CONTINUE,
    PAUSED,
    RUNNING,
    STOPPED,
    Arm,
    ExperimentStore,
    UnknownExperiment,
    new_experiment,
    report,
)
from rag_core.querylog import ServingDatabase


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'serving.db'}"
    return request.getfixturevalue("postgres_database")


def two_arms(name: str = "rerank-ab", min_samples: int = 2):
    return new_experiment(
        name,
        [Arm("control", 0.5), Arm("bm25", 0.5, mode="bm25", top_k=3)],
        DecisionRule(min_samples=min_samples, guardrails=("degraded_rate",)),
        excluded_tenants=["acme"],
    )


def test_lifecycle_and_one_running_experiment(database_url: str) -> None:
    database = ServingDatabase(database_url)
    store = ExperimentStore(database.engine)
    created = store.create(two_arms())
    assert created.status == RUNNING and store.running() == created
    assert created.arms[1] == Arm("bm25", 0.5, mode="bm25", top_k=3)
    assert created.excluded_tenants == {"acme"} and created.rule.guardrails == ("degraded_rate",)
    with pytest.raises(Refusal, match="rerank-ab is running — pause or stop it first"):
        store.create(two_arms("another"))
    with pytest.raises(Refusal, match="exists already"):
        store.create(two_arms())
    assert store.set_status("rerank-ab", PAUSED).status == PAUSED and store.running() is None
    second = store.create(two_arms("another"))
    with pytest.raises(Refusal, match="another is running"):
        store.set_status("rerank-ab", RUNNING)
    store.set_status("another", STOPPED)
    assert store.set_status("rerank-ab", RUNNING).status == RUNNING
    with pytest.raises(Refusal, match="stopped for good"):
        store.set_status("another", RUNNING)
    assert [experiment.name for experiment in store.list()] == ["another", "rerank-ab"]
    assert store.get("another").experiment_id == second.experiment_id
    with pytest.raises(UnknownExperiment, match="rag experiment list"):
        store.get("nothing")
    database.close()


def test_per_arm_metrics_join_the_query_log_and_feedback(database_url: str) -> None:
    database = ServingDatabase(database_url)
    store = ExperimentStore(database.engine)
    experiment = store.create(two_arms(min_samples=3))
    common = {"tenant": "default", "question": "q", "mode": "hybrid", "top_k": 3, "index_version": "1"}

    def served(arm: str, relevant: bool, rating: int, clicked: str | None, degraded: bool = False) -> None:
        query_id = database.log_query(
            **common,
            chunk_ids=["c1", "c2", "c3"],
            timings_ms={"embed": 2.0, "search": 8.0, "generate": 500.0},
            model="extractive/best-sentences",
            degraded=degraded,
            experiment=experiment.name,
            arm=arm,
        )
        database.add_feedback(query_id, rating, relevant, "", chunk_id=clicked)

    served("control", True, 5, "c1")
    served("control", False, 2, None, degraded=True)
    served("bm25", True, 4, "c3")
    database.log_query(**common, experiment=experiment.name, arm="bm25")  # a retrieval without feedback
    database.log_query(**common)  # outside the experiment: never counted
    database.flush()

    result = report(database.engine, experiment)
    control, bm25 = result.decision.metrics["control"], result.decision.metrics["bm25"]
    assert (control.queries, bm25.queries) == (2, 2)
    assert control.relevance_rate.value == 0.5 and bm25.relevance_rate.value == 1.0
    assert control.mean_rating.value == 3.5 and bm25.mean_rating.value == 4.0
    assert control.degraded_rate.value == 0.5 and bm25.degraded_rate.value == 0.0  # one answer, one retrieval
    assert control.feedback_rate.value == 1.0 and bm25.feedback_rate.value == 0.5
    assert control.latency_p50_ms.value == 10.0  # retrieval only: embed + search, not generate
    assert control.chunk_rank.value == 1.0 and bm25.chunk_rank.value == 3.0
    assert result.decision.verdict == CONTINUE and "2 of the 3" in result.decision.reasons[0]

    store.record_replay(experiment.name, {"control": 0.61, "bm25": 0.42})
    assert store.get(experiment.name).replay == {"control": 0.61, "bm25": 0.42}
    database.close()


def test_the_arm_columns_are_added_to_an_existing_query_log(database_url: str) -> None:
    ServingDatabase(database_url).close()
    engine = sa.create_engine(database_url)
    with engine.begin() as connection:  # the query log as shipped before experiments
        connection.execute(sa.text("DROP INDEX ix_rag_queries_experiment"))
        for table, column in (("rag_queries", "experiment"), ("rag_queries", "arm"), ("rag_feedback", "chunk_id")):
            connection.execute(sa.text(f"ALTER TABLE {table} DROP COLUMN {column}"))
    database = ServingDatabase(database_url)
    columns = {
        table: {c["name"] for c in sa.inspect(engine).get_columns(table)} for table in ("rag_queries", "rag_feedback")
    }
    assert {"experiment", "arm"} <= columns["rag_queries"] and "chunk_id" in columns["rag_feedback"]
    experiment = ExperimentStore(database.engine).create(two_arms())
    database.log_query(
        tenant="default", question="q", mode="bm25", top_k=3, index_version="1", experiment=experiment.name, arm="bm25"
    )
    database.flush()
    assert report(database.engine, experiment).decision.metrics["bm25"].queries == 1
    database.close()
    engine.dispose()
