"""Browsing the query log and listing keys (the console's logs and admin pages) on SQLite and on the real
PostgreSQL: tenant scope, filters, a literal `%` or `_` in the search text, paging, newest first."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from rag_core.querylog import QueryLogFilter, ServingDatabase


def _ask(database: ServingDatabase, tenant: str, question: str, degraded: bool = False) -> str:
    return database.log_query(
        tenant=tenant,
        question=question,
        mode="hybrid",
        top_k=2,
        index_version="v1",
        chunk_ids=["a#0"],
        timings_ms={"embed": 1.0, "search": 2.5},
        model="extractive",
        degraded=degraded,
    )


def _browse(database: ServingDatabase) -> None:
    started = datetime.now(UTC) - timedelta(seconds=1)
    percent = _ask(database, "acme", "Is it 100% covered?")
    plain = _ask(database, "acme", "Is it 1000 covered?", degraded=True)
    underscore = _ask(database, "acme", "what is snake_case?")
    _ask(database, "globex", "Is it 100% covered?")
    database.add_feedback(plain, 2, False, "wrong number")

    def ids(where: QueryLogFilter, offset: int = 0, limit: int = 50) -> tuple[int, list[str]]:
        total, rows = database.query_log("acme", where, offset, limit)
        return total, [row.query_id for row in rows]

    assert ids(QueryLogFilter()) == (3, [underscore, plain, percent])  # newest first, only acme's
    assert ids(QueryLogFilter(text="100%")) == (1, [percent])
    assert ids(QueryLogFilter(text="SNAKE_case")) == (1, [underscore])
    assert ids(QueryLogFilter(text="10_0")) == (0, [])
    assert ids(QueryLogFilter(degraded=True)) == (1, [plain])
    assert ids(QueryLogFilter(rated=True)) == (1, [plain])
    assert ids(QueryLogFilter(rated=False)) == (2, [underscore, percent])
    assert ids(QueryLogFilter(since=started, until=datetime.now(UTC) + timedelta(seconds=1)))[0] == 3
    assert ids(QueryLogFilter(until=started)) == (0, [])
    assert ids(QueryLogFilter(), offset=1, limit=1) == (3, [plain])

    _, [row] = database.query_log("acme", QueryLogFilter(rated=True))
    assert (row.question, row.chunk_ids, row.timings_ms, row.model) == (
        "Is it 1000 covered?",
        ["a#0"],
        {"embed": 1.0, "search": 2.5},
        "extractive",
    )
    assert [(f.rating, f.is_relevant, f.comment) for f in row.feedback] == [(2, False, "wrong number")]
    assert row.created_at.tzinfo is not None and row.created_at >= started

    first = database.create_key("acme", "first")
    second = database.create_key("globex", "second")
    database.revoke_key(first.split("_")[1])
    keys = database.list_keys()
    assert [(k.tenant, k.name, k.revoked) for k in keys][:2] == [("globex", "second", False), ("acme", "first", True)]
    assert [k.name for k in database.list_keys("globex")] == ["second"]
    assert all(second not in repr(key) for key in keys)


def test_browsing_the_query_log_on_sqlite(tmp_path):
    _browse(ServingDatabase(f"sqlite:///{tmp_path / 'serving.db'}"))


@pytest.mark.postgres
def test_browsing_the_query_log_on_postgres(postgres_database):
    _browse(ServingDatabase(postgres_database))
