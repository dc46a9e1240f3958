"""Tenants end to end over real HTTP, on an index of its own (deleting a tenant must not touch the shared
`served` one): the admin creates a tenant and a key, the tenant queries, rates, converses, disables a chunk and
uploads; its counts, quota and rate limit hold; then deleting it leaves nothing of it in the files, the
catalog, Milvus (served and candidate builds, and the in-memory engine), Redis or any SQL table."""

from __future__ import annotations

import shutil
import uuid
from urllib.parse import quote

import httpx
import pytest
import redis
import sqlalchemy as sa
from dagster import instance_for_test

from rag_assets.cli import index
from rag_core.cache import tenant_prefix
from rag_core.catalog import Catalog, disabled_chunks, source_partitions
from rag_core.ids import source_key
from rag_core.search.engines import IndexConnection
from rag_core.search.filters import SearchFilter
from rag_core.settings import Settings
from rag_core.store import IndexBuild
from rag_serving.app import create_app
from tests.conftest import FIXTURES
from tests.served import REDIS_URL, redis_available
from tests.serving_server import ServerThread

pytestmark = pytest.mark.slow
ADMIN_KEY = "test-admin-key-for-tenants"
CANDIDATE = "candidate_copy"
TENANT_DOCS = {
    "falcon.md": "# Falcon\n\nProject Falcon ships the quantum widget in March, after the Heron review.",
    "heron.md": "# Heron\n\nThe Heron review covers widget safety and the March launch checklist.",
}
MILVUS_FIELDS = [
    "chunk_id", "doc_id", "source_key", "tenant", "source", "title", "text", "search_text",
    "position", "start_char", "end_char", "dense", "metadata",
]


def _corpus(root, tenant: str):
    documents = root / "documents"
    documents.mkdir()
    shutil.copy(FIXTURES / "corpus" / "getting-started.md", documents)
    folder = documents / f"tenant={tenant}"
    folder.mkdir()
    for name, text in TENANT_DOCS.items():
        (folder / name).write_text(text)
    return documents


def _copy_into_candidate(settings: Settings) -> str:
    """A second build of the alias holding the served rows (vectors included): a purge must reach every build."""
    with IndexConnection.from_settings(settings).store() as store:
        served = store.alias_target()
        record = store.record(served)
        build = IndexBuild(record.embedding_model, record.embedding_version, record.dimension, record.chunking)
        candidate = store.ensure_collection(build, f"{store.alias}__{CANDIDATE}")
        store.upsert(candidate, list(store.all_rows(served, MILVUS_FIELDS)))
    return candidate


def _milvus_rows(settings: Settings, tenant: str) -> dict[str, int]:
    with IndexConnection.from_settings(settings).store() as store:
        expression = SearchFilter(tenant).expression()
        return {name: len(list(store.rows_where(name, expression, ["chunk_id"]))) for name in store.list_collections()}


def _sql_rows(url: str, tenant: str) -> dict[str, int]:
    """Rows naming the tenant in every table of the database that has a `tenant` (or, for tenants, `name`) column."""
    engine = sa.create_engine(url)
    try:
        found = {}
        tables = sa.MetaData()
        tables.reflect(engine)
        with engine.connect() as connection:
            for table in tables.sorted_tables:
                column = table.c.get("tenant") if "tenant" in table.c else None
                if column is None and table.name == "rag_tenants":
                    column = table.c.name
                if column is not None:
                    found[table.name] = connection.execute(
                        sa.select(sa.func.count()).select_from(table).where(column == tenant)
                    ).scalar()
        return found
    finally:
        engine.dispose()


def _count(settings: Settings, table: str, column: str, value: str) -> int:
    engine = sa.create_engine(settings.resolved_serving_db_url)
    try:
        with engine.connect() as connection:
            query = sa.text(f"SELECT count(*) FROM {table} WHERE {column} = :value")
            return connection.execute(query, {"value": value}).scalar()
    finally:
        engine.dispose()


def _redis_keys(client: redis.Redis, pattern: str) -> list[bytes]:
    return list(client.scan_iter(match=pattern, count=500))


def test_a_tenant_is_administered_limited_and_deleted_without_a_trace(tmp_path):
    redis_available(REDIS_URL)
    tenant = f"purge-{uuid.uuid4().hex[:8]}"  # its Redis keys are its own
    settings = Settings(
        data_dir=tmp_path / "data",
        documents_dir=_corpus(tmp_path, tenant),
        dagster_home=tmp_path / "dagster",
        redis_url=REDIS_URL,
        rate_limit_per_minute=10_000,
        alias_poll_s=0.5,
        admin_key=ADMIN_KEY,
    )
    settings.resolved_dagster_home.mkdir(parents=True)
    with instance_for_test(temp_dir=str(settings.resolved_dagster_home)) as instance:
        index(settings, instance=instance)
    candidate = _copy_into_candidate(settings)
    before = _milvus_rows(settings, tenant)
    assert before[candidate] == before[next(name for name in before if name != candidate)] > 0

    server = ServerThread(create_app(settings)).start()
    cache = redis.Redis.from_url(REDIS_URL)
    admin = httpx.Client(base_url=server.url, headers={"X-Admin-Key": ADMIN_KEY}, timeout=60)
    try:
        # ---- the admin creates the tenant and a key; nobody else may
        created = admin.post("/v1/admin/tenants", json={"name": tenant})
        assert created.status_code == 201 and created.json()["rate_limit_per_minute"] is None
        assert admin.post("/v1/admin/tenants", json={"name": tenant}).status_code == 409
        key = admin.post(f"/v1/admin/tenants/{tenant}/keys", json={"name": "bot"}).json()
        assert key["tenant"] == tenant and key["key"].startswith("rag_")
        assert admin.post("/v1/admin/tenants", json={"name": f"{tenant}-b"}).status_code == 201
        with server.client(key["key"]) as caller:
            assert caller.get("/v1/admin/tenants").status_code == 403  # a tenant key is not an admin key
        assert httpx.get(f"{server.url}/v1/admin/tenants").status_code == 401
        wrong = httpx.get(f"{server.url}/v1/admin/tenants", headers={"X-Admin-Key": "wrong"})
        assert wrong.status_code == 401
        listed = [t["name"] for t in admin.get("/v1/admin/tenants").json()["tenants"]]
        assert tenant in listed and f"{tenant}-b" in listed

        # ---- the tenant leaves traces everywhere: cache, query log, feedback, a conversation, a disabled chunk
        with server.client(key["key"]) as caller:
            question = {"query": "When does Project Falcon ship the quantum widget?", "top_k": 3}
            first = caller.post("/v1/retrieve", json=question).json()
            assert caller.post("/v1/retrieve", json=question).json()["cached"] is True
            assert {chunk["source"] for chunk in first["chunks"]} <= {f"tenant={tenant}/{name}" for name in TENANT_DOCS}
            rated = caller.post("/v1/feedback", json={"query_id": first["query_id"], "rating": 5, "is_relevant": True})
            assert rated.status_code == 201
            conversation = caller.post("/v1/conversations", json={"title": "launch"}).json()
            asked = caller.post(
                f"/v1/conversations/{conversation['conversation_id']}/messages", json={"question": "What ships?"}
            )
            assert asked.status_code == 200
            chunk = first["chunks"][-1]
            document = source_key(chunk["source"])
            disabled = caller.patch(
                f"/v1/documents/{document}/chunks/{quote(chunk['chunk_id'], safe='/')}", json={"enabled": False}
            )
            assert disabled.status_code == 200
        assert _redis_keys(cache, f"{tenant_prefix(tenant)}*")

        # ---- counts, then the quota: one more file fits, a second is refused and nothing is written
        shown = admin.get(f"/v1/admin/tenants/{tenant}").json()
        catalog = Catalog(settings.resolved_catalog_url)
        entries = [entry for entry in catalog.entries().values() if entry.tenant == tenant]
        assert shown["usage"] == {
            "files": len(TENANT_DOCS),
            "documents": sum(entry.documents for entry in entries),
            "chunks": sum(entry.chunks for entry in entries),
        }
        assert shown["usage"]["chunks"] > 0 and shown["keys"] == 1
        limited = admin.patch(f"/v1/admin/tenants/{tenant}", json={"max_documents": len(TENANT_DOCS) + 1})
        assert limited.json()["max_documents"] == len(TENANT_DOCS) + 1
        assert limited.json()["rate_limit_per_minute"] is None  # a limit the body leaves out stays as it was
        folder = settings.documents_dir / f"tenant={tenant}"
        with server.client(key["key"]) as caller:
            upload = caller.post("/v1/documents", files={"file": ("notes.md", b"# Notes\n\nFalcon notes.")})
            assert upload.status_code == 202
            again = caller.post("/v1/documents", files={"file": ("notes.md", b"# Notes\n\nNew version.")})
            assert again.status_code == 202  # a new version of a stored file takes no room
            refused = caller.post("/v1/documents", files={"file": ("more.md", b"# More\n\nOne too many.")})
        assert refused.status_code == 409
        assert "max_documents" in refused.json()["detail"] and "rag tenant set-limits" in refused.json()["detail"]
        assert sorted(path.name for path in folder.iterdir()) == sorted([*TENANT_DOCS, "notes.md"])
        assert admin.get(f"/v1/admin/tenants/{tenant}").json()["usage"]["files"] == len(TENANT_DOCS) + 1

        # ---- its own rate limit: a fresh key gets 2 requests a minute, the third is refused
        fresh = admin.post(f"/v1/admin/tenants/{tenant}/keys", json={"name": "limited"}).json()
        assert admin.patch(f"/v1/admin/tenants/{tenant}", json={"rate_limit_per_minute": 2}).status_code == 200
        with server.client(fresh["key"]) as caller:
            statuses = [caller.post("/v1/retrieve", json=question).status_code for _ in range(3)]
            over = caller.post("/v1/retrieve", json=question)
        assert statuses == [200, 200, 429] and over.status_code == 429
        assert f"tenant {tenant}'s rate limit of 2" in over.json()["detail"] and int(over.headers["Retry-After"]) > 0
        keys_listed = admin.get(f"/v1/admin/tenants/{tenant}/keys").json()["keys"]
        assert {k["key_id"] for k in keys_listed} == {key["key_id"], fresh["key_id"]}
        assert _redis_keys(cache, f"rag:ratelimit:key:{fresh['key_id']}")

        # ---- deletion: refused for the default tenant, then nothing of the tenant remains
        assert admin.delete(f"/v1/admin/tenants/{settings.default_tenant}").status_code == 409
        with server.client(key["key"]) as caller:
            assert caller.delete(f"/v1/admin/tenants/{tenant}").status_code == 403
        deleted = admin.delete(f"/v1/admin/tenants/{tenant}")
        assert deleted.status_code == 200, deleted.text
        counts = deleted.json()["deleted"]
        assert counts["files"] == len(TENANT_DOCS) + 1 and counts["api_keys"] == 2
        assert counts["queries"] >= 3 and counts["feedback"] == 1 and counts["conversations"] == 1
        assert counts["catalog_rows"] == len(entries) and counts["disabled_chunks"] == 1
        assert deleted.json()["vectors"] == before and counts["cache_entries"] > 0
        assert counts["rate_limit_windows"] >= 1 and counts["staged_files"] > 0

        assert not folder.exists()
        partition_keys = {f"{entry.partition_key}.pkl" for entry in entries}
        assert not [path for path in settings.staging_dir.rglob("*.pkl") if path.name in partition_keys]
        with catalog.engine.connect() as connection:
            for table in (source_partitions, disabled_chunks):
                assert connection.execute(sa.select(table).where(table.c.tenant == tenant)).first() is None
        assert _milvus_rows(settings, tenant) == {name: 0 for name in before}
        searcher = server.app.state.rag.index.current().searcher  # the in-memory engine follows the deletion
        assert searcher.matching_rows(SearchFilter(tenant)) == []
        assert _redis_keys(cache, f"{tenant_prefix(tenant)}*") == []
        assert _redis_keys(cache, f"rag:ratelimit:key:{fresh['key_id']}") == []
        assert _redis_keys(cache, f"rag:ratelimit:key:{key['key_id']}") == []
        sql = _sql_rows(settings.resolved_serving_db_url, tenant)
        assert {"rag_queries", "rag_api_keys", "rag_tenants", "rag_conversations"} <= set(sql)
        assert set(sql.values()) == {0}
        # The tables without a tenant column hang off rows that were the tenant's.
        assert _count(settings, "rag_feedback", "query_id", first["query_id"]) == 0
        assert _count(settings, "rag_conversation_turns", "conversation_id", conversation["conversation_id"]) == 0
        with server.client(key["key"]) as caller:
            assert caller.post("/v1/retrieve", json=question).status_code == 401
        assert admin.get(f"/v1/admin/tenants/{tenant}").status_code == 404

        # ---- everyone else is untouched
        assert admin.get(f"/v1/admin/tenants/{tenant}-b").status_code == 200
        default_rows = _milvus_rows(settings, settings.default_tenant)
        assert all(count > 0 for count in default_rows.values())
    finally:
        admin.close()
        server.stop()
        for leftover in _redis_keys(cache, f"{tenant_prefix(tenant)}*"):
            cache.delete(leftover)
