"""The query log, feedback and API keys on SQLite and on the real PostgreSQL; the key CLI."""

import subprocess
import sys

import pytest

from rag_core.querylog import ServingDatabase


def _log(database: ServingDatabase, tenant: str, question: str, **overrides) -> str:
    values = dict(
        key_id=None,
        mode="dense",
        top_k=3,
        chunk_ids=[],
        timings_ms={},
        model="m",
        index_version="v1",
        degraded=False,
        cached=False,
    )
    return database.log_query(tenant=tenant, question=question, **{**values, **overrides})


def _exercise(database: ServingDatabase) -> None:
    key = database.create_key("acme", "ci")
    assert key.startswith("rag_") and database.authenticate(key).tenant == "acme"
    assert database.authenticate(key + "x") is None and database.authenticate("garbage") is None
    first = _log(database, "acme", "q1", chunk_ids=["a#0:1"], timings_ms={"search": 1.5})
    second = _log(database, "acme", "q2")
    _log(database, "other", "q3", cached=True)
    assert database.query_exists(first, "acme") and not database.query_exists(first, "other")
    database.add_feedback(first, 1, False, "bad")
    database.add_feedback(second, 4, True, "")
    database.add_feedback(second, 5, None, "")
    analytics = database.analytics("acme")
    assert analytics["queries"] == 2 and analytics["feedback"] == 3 and analytics["feedback_rate"] == 1.0
    assert analytics["mean_rating"] == pytest.approx(10 / 3, abs=1e-3) and analytics["relevance_rate"] == 0.5
    assert [w["question"] for w in analytics["worst_queries"]] == ["q1", "q2"]
    assert database.relevant_pairs() == [("q2", [])]
    assert database.revoke_key(key.split("_")[1]) and database.authenticate(key) is None


def test_serving_database_on_sqlite(tmp_path):
    _exercise(ServingDatabase(f"sqlite:///{tmp_path / 'serving.sqlite'}"))


@pytest.mark.postgres
def test_serving_database_on_postgres(postgres_database):
    _exercise(ServingDatabase(postgres_database))


@pytest.mark.postgres
def test_a_nul_in_a_question_or_comment_is_stored_on_postgres_not_retried_forever(postgres_database):
    database = ServingDatabase(postgres_database)
    query_id = _log(database, "acme", "embedding\x00cache")
    database.add_feedback(query_id, 2, False, "bad\x00answer")
    database.flush()
    worst = database.analytics("acme")["worst_queries"]
    assert worst[0]["question"] == "embedding\ufffdcache"
    assert database.query_exists(query_id, "acme")


def test_create_key_command_prints_a_working_key(tmp_path):
    url = f"sqlite:///{tmp_path / 'serving.sqlite'}"
    result = subprocess.run(
        [sys.executable, "-m", "rag_serving.cli", "create-key", "--tenant", "acme"],
        env={"RAG_SERVING_DB_URL": url, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    key = result.stdout.strip()
    assert "only its hash is kept" in result.stderr
    assert ServingDatabase(url).authenticate(key).tenant == "acme"
