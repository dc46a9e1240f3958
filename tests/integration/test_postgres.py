"""Dagster instance storage (dagster-postgres) and the document catalog on the real PostgreSQL."""

import pytest
import sqlalchemy as sa
from dagster import instance_for_test

from rag_assets.cli import index
from rag_core.catalog import INDEXED, Catalog, CatalogEntry

pytestmark = pytest.mark.postgres


def test_catalog_on_postgres(postgres_database):
    catalog = Catalog(postgres_database)
    entry = CatalogEntry("k1", "a.md", "default", "h1", INDEXED, documents=1, chunks=3, quarantined=["x: y"])
    catalog.record([entry])
    catalog.record([entry])
    [stored] = catalog.entries().values()
    assert (stored.chunks, stored.generation, stored.quarantined) == (3, 2, ["x: y"])
    catalog.mark_stale(["k1"])
    assert catalog.entries()["k1"].content_hash == ""
    catalog.remove(["k1"])
    assert catalog.entries() == {}


@pytest.mark.slow
def test_materialize_with_dagster_postgres_storage(settings, postgres_database):
    settings = settings.model_copy(update={"catalog_url": postgres_database})
    settings.resolved_dagster_home.mkdir(parents=True)
    overrides = {"storage": {"postgres": {"postgres_url": postgres_database}}}
    with instance_for_test(temp_dir=str(settings.resolved_dagster_home), overrides=overrides) as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        summary = index(settings, instance=instance)
        # a vector per chunk and per document (its whole-text entry for BM25)
        assert summary["documents"] == 17 and summary["vectors"] == summary["chunks"] + 17 > 17
        assert len(instance.get_dynamic_partitions("documents")) == 6
    engine = sa.create_engine(postgres_database)
    with engine.connect() as connection:
        runs = connection.execute(sa.text("SELECT count(*) FROM runs WHERE status = 'SUCCESS'")).scalar()
        materialized = connection.execute(
            sa.text("SELECT count(*) FROM event_logs WHERE dagster_event_type = 'ASSET_MATERIALIZATION'")
        ).scalar()
        catalog_rows = connection.execute(sa.text("SELECT count(*) FROM rag_source_partitions")).scalar()
    engine.dispose()
    assert runs == 2  # the index run, then the in-memory engine's snapshot of it
    assert materialized == 4 * 6 + 1  # four assets × six partitions in one run, and search_index
    assert catalog_rows == 6
