"""API workers start together: each creates the serving and catalog tables, on one fresh PostgreSQL."""

from __future__ import annotations

import multiprocessing

import sqlalchemy as sa


def _open_databases(url: str, start) -> None:
    from rag_core.catalog import Catalog
    from rag_core.querylog import ServingDatabase

    start.wait()
    database = ServingDatabase(url)
    Catalog(url)
    database.close()


def test_workers_creating_the_tables_at_once_all_start(postgres_database):
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(4)
    workers = [context.Process(target=_open_databases, args=(postgres_database, start)) for _ in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert [worker.exitcode for worker in workers] == [0, 0, 0, 0]
    engine = sa.create_engine(postgres_database)
    assert {"rag_queries", "rag_feedback", "rag_api_keys", "rag_source_partitions"} <= set(
        sa.inspect(engine).get_table_names()
    )
    engine.dispose()
