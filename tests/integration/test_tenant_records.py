"""Tenants in the serving database (SQLite and PostgreSQL): records and limits, the request path's cached
record, and the purge of everything a tenant left in the databases, the folders and the caches."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from rag_core.cache import LRUCache, RedisCache, cache_key
from rag_core.catalog import Catalog, CatalogEntry
from rag_core.conversations import ConversationStore, Turn
from rag_core.errors import Refusal
from rag_core.experiments import Arm, ExperimentStore, new_experiment
from rag_core.querylog import ServingDatabase, api_keys, tenants
from rag_core.ratelimit import RateLimiter
from rag_core.search.engines import IndexConnection
from rag_core.tenant_data import PurgeIncomplete, TenantPlaces, purge_tenant
from rag_core.tenants import InvalidTenant, UnknownTenant
from tests.integration.test_request_path import Clock, database_url, statements  # noqa: F401 (a fixture)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def database(database_url, clock) -> ServingDatabase:  # noqa: F811
    opened = ServingDatabase(database_url, auth_cache_ttl_s=5, clock=clock)
    try:
        yield opened
    finally:
        opened.close()


def test_tenants_are_records_with_limits_and_a_key_creates_its_tenant(database):
    created = database.create_tenant("acme", rate_limit_per_minute=30)
    assert created is not None and created.max_documents is None
    assert database.create_tenant("acme") is None  # exists already
    database.create_key("globex", "bot")  # the way keys were always created: the tenant follows
    assert [tenant.name for tenant in database.list_tenants()] == ["acme", "globex"]
    assert database.tenant("globex").rate_limit_per_minute is None
    changed = database.set_tenant_limits("acme", max_documents=10)
    assert (changed.rate_limit_per_minute, changed.max_documents) == (30, 10)  # the other limit stays
    cleared = database.set_tenant_limits("acme", rate_limit_per_minute=None)
    assert (cleared.rate_limit_per_minute, cleared.max_documents) == (None, 10)
    assert database.set_tenant_limits("acme") == cleared  # nothing named, nothing changed
    with pytest.raises(UnknownTenant, match="rag tenant list"):
        database.set_tenant_limits("nobody", max_documents=1)
    with pytest.raises(ValueError, match="max_documents must be 0 or more"):
        database.set_tenant_limits("acme", max_documents=-1)
    with pytest.raises(InvalidTenant):
        database.create_tenant("Not A Name")


def test_the_request_path_reads_a_tenant_from_memory_until_its_ttl_ends(database, clock):
    database.create_tenant("acme", rate_limit_per_minute=30)
    assert database.cached_tenant("acme").rate_limit_per_minute == 30
    sent = statements(database)
    assert [database.cached_tenant("acme").rate_limit_per_minute for _ in range(100)] == [30] * 100
    assert database.cached_tenant("nobody") is None and sent  # an unknown name is looked up once…
    sent.clear()
    assert database.cached_tenant("nobody") is None and sent == []  # …and remembered briefly
    database.set_tenant_limits("acme", rate_limit_per_minute=2)  # a change here applies here at once
    assert database.cached_tenant("acme").rate_limit_per_minute == 2
    other = ServingDatabase(database.engine.url.render_as_string(hide_password=False), clock=clock)
    try:
        assert other.cached_tenant("acme").rate_limit_per_minute == 2
        database.set_tenant_limits("acme", rate_limit_per_minute=7)
        assert other.cached_tenant("acme").rate_limit_per_minute == 2  # another replica: within its TTL
        clock.now += 5.01
        assert other.cached_tenant("acme").rate_limit_per_minute == 7
    finally:
        other.close()


def test_keys_created_before_tenants_were_records_get_their_tenant(database):
    database.create_key("legacy")
    with database.engine.begin() as connection:
        connection.execute(tenants.delete())
    reopened = ServingDatabase(database.engine.url.render_as_string(hide_password=False))
    try:
        assert [tenant.name for tenant in reopened.list_tenants()] == ["legacy"]
    finally:
        reopened.close()


def test_a_purge_deletes_every_row_file_and_entry_of_the_tenant_and_nothing_else(database, tmp_path):
    url = database.engine.url.render_as_string(hide_password=False)
    documents, staging = tmp_path / "documents", tmp_path / "staging"
    places = TenantPlaces(
        documents_dir=documents,
        staging_dir=staging,
        default_tenant="default",
        database=database,
        catalog=Catalog(url),  # the catalog in the same database, as a small deployment has it
        open_store=IndexConnection(str(tmp_path / "milvus.db"), "", "rag_chunks", tmp_path / "search").store,
        cache=LRUCache(),
        limiter=RateLimiter(per_minute=10),
    )
    traces = {tenant: _leave_traces(places, tenant) for tenant in ("acme", "globex")}

    with pytest.raises(Refusal, match="default tenant"):
        purge_tenant("default", places)
    with pytest.raises(UnknownTenant):
        purge_tenant("nobody", places)
    report = purge_tenant("acme", places)

    assert report.counts() == {
        "files": 1, "staged_files": 1, "catalog_rows": 1, "disabled_chunks": 1, "cache_entries": 1,
        "rate_limit_windows": 1, "queries": 1, "feedback": 1, "conversations": 1, "conversation_turns": 1,
        "experiment_exclusions": 1, "api_keys": 1, "vectors": 0,
    }
    assert not (documents / "tenant=acme").exists() and (documents / "tenant=globex" / "plan.md").exists()
    assert sorted(path.name for path in staging.rglob("*.pkl")) == [f"{traces['globex']}.pkl"]
    assert set(places.catalog.entries()) == {traces["globex"]}
    assert places.catalog.disabled_chunks() == {"globex": frozenset({"globex#0"})}
    assert places.cache.get(cache_key("retrieved", "v1", "q", tenant="acme")) is None
    assert places.cache.get(cache_key("retrieved", "v1", "q", tenant="globex")) == ["globex"]
    assert [tenant.name for tenant in database.list_tenants()] == ["globex"]
    with database.engine.connect() as connection:
        assert set(connection.execute(sa.select(api_keys.c.tenant)).scalars()) == {"globex"}
    assert database.analytics("acme")["queries"] == 0 and database.analytics("globex")["feedback"] == 1
    conversations = ConversationStore(database.engine)
    assert conversations.list("acme", "user", 10) == [] and len(conversations.list("globex", "user", 10)) == 1
    assert ExperimentStore(database.engine).get("split").excluded_tenants == frozenset({"globex"})
    assert purge_tenant("globex", places).counts()["api_keys"] == 1  # the record of globex held until now


def test_a_purge_cut_short_by_redis_keeps_the_record_and_finishes_when_run_again(database, tmp_path):
    places = TenantPlaces(
        documents_dir=tmp_path / "documents",
        staging_dir=tmp_path / "staging",
        default_tenant="default",
        database=database,
        catalog=Catalog(f"sqlite:///{tmp_path / 'catalog.sqlite'}"),
        open_store=IndexConnection(str(tmp_path / "milvus.db"), "", "rag_chunks", tmp_path / "search").store,
        cache=RedisCache("redis://127.0.0.1:1/0"),  # nothing listens there
        limiter=RateLimiter(per_minute=10),
    )
    _leave_traces(places, "acme")
    with pytest.raises(PurgeIncomplete, match="run the deletion again once Redis answers"):
        purge_tenant("acme", places)
    assert database.tenant("acme") is not None and database.list_keys("acme") == []  # no key works meanwhile
    assert not (places.documents_dir / "tenant=acme").exists()
    report = purge_tenant("acme", replace(places, cache=LRUCache()))
    assert report.counts()["queries"] == 1 and database.tenant("acme") is None


def _leave_traces(places: TenantPlaces, tenant: str) -> str:
    """A tenant with a key, a file, a staged output, a catalog row, a disabled chunk, a cached result, a rate
    limit window, a rated query, a conversation and an experiment exclusion; its partition key."""
    database = places.database
    key = database.create_key(tenant)
    folder = places.documents_dir / f"tenant={tenant}"
    folder.mkdir(parents=True)
    (folder / "plan.md").write_text(f"# {tenant}")
    partition = uuid.uuid4().hex
    (places.staging_dir / "document_chunks").mkdir(parents=True, exist_ok=True)
    (places.staging_dir / "document_chunks" / f"{partition}.pkl").write_bytes(b"staged")
    places.catalog.record([CatalogEntry(partition, f"tenant={tenant}/plan.md", tenant, "hash", "indexed")])
    places.catalog.set_chunk_enabled(tenant, partition, f"{tenant}#0", enabled=False)
    places.cache.set(cache_key("retrieved", "v1", "q", tenant=tenant), [tenant], 60)
    places.limiter.hit(f"key:{key.split('_')[1]}")
    query_id = database.log_query(tenant=tenant, question="q", mode="hybrid", top_k=3, index_version="v1")
    database.add_feedback(query_id, 5, True, "")
    conversations = ConversationStore(database.engine)
    conversation = conversations.create(tenant, "user", "title")
    conversations.add_turn(conversation, Turn("q", "q", query_id, {"answer": "a"}, datetime.now(UTC)))
    experiments = ExperimentStore(database.engine)
    if tenant == "acme":
        arms = [Arm("control", 0.5), Arm("other", 0.5, top_k=3)]
        experiments.create(new_experiment("split", arms, excluded_tenants=["acme", "globex"]))
    return partition
