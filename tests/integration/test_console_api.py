"""The console's JSON routes over real HTTP on the served index: the document list, re-index, the query log
and the admin key routes — each scoped to the caller's tenant."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from pydantic import SecretStr

from rag_core.querylog import ServingDatabase
from rag_serving.app import create_app
from tests.served import ADMIN_KEY
from tests.serving_server import ServerThread

pytestmark = pytest.mark.slow


def test_document_list_shows_only_the_callers_documents_with_status_size_and_run(served):
    with served.client("acme") as acme, served.client("globex") as globex, served.client() as default:
        mine = acme.get("/v1/documents").json()
        index_version = acme.get("/ready").json()["index_version"]
        theirs = globex.get("/v1/documents").json()
        everyone_else = default.get("/v1/documents").json()

    roadmap = next(d for d in mine["documents"] if d["source"] == "tenant=acme/acme-roadmap.md")
    assert all(d["source"].startswith("tenant=acme/") for d in mine["documents"])
    assert roadmap["status"] == "indexed" and roadmap["chunks"] == 1 and roadmap["reason"] == ""
    assert roadmap["bytes"] == (served.settings.documents_dir / roadmap["source"]).stat().st_size
    assert roadmap["index_version"] == index_version
    assert datetime.fromisoformat(roadmap["modified_at"]) <= datetime.now(UTC)
    # The run that indexed it, in the served Dagster instance, linked to the Dagster UI.
    run = served.instance.get_run_by_id(roadmap["run"]["run_id"])
    assert run is not None and roadmap["run"]["status"] == run.status.value == "SUCCESS"
    assert roadmap["run"]["url"] == f"http://127.0.0.1:3000/runs/{run.run_id}"

    assert all(d["source"].startswith("tenant=globex/") for d in theirs["documents"])
    assert roadmap["doc_id"] not in {d["doc_id"] for d in theirs["documents"] + everyone_else["documents"]}
    assert not any(d["source"].startswith("tenant=") for d in everyone_else["documents"])
    assert {"getting-started.md", "release-notes.txt"} <= {d["source"] for d in everyone_else["documents"]}


def test_document_list_pages_and_filters(served):
    with served.client() as client:
        everything = client.get("/v1/documents", params={"limit": 200}).json()
        first = client.get("/v1/documents", params={"limit": 2}).json()
        second = client.get("/v1/documents", params={"limit": 2, "offset": 2}).json()
        named = client.get("/v1/documents", params={"name": "RELEASE"}).json()
        indexed = client.get("/v1/documents", params={"status": "indexed", "limit": 200}).json()
        quarantined = client.get("/v1/documents", params={"status": "quarantined"}).json()
        refused = client.get("/v1/documents", params={"status": "lost", "limit": 0})

    assert everything["total"] == len(everything["documents"]) >= 4
    assert [first["total"], second["total"]] == [everything["total"]] * 2
    assert [d["doc_id"] for d in first["documents"] + second["documents"]] == [
        d["doc_id"] for d in everything["documents"][:4]
    ]
    assert [d["source"] for d in named["documents"]] == ["release-notes.txt"] and named["total"] == 1
    assert indexed["total"] > 0 and {d["status"] for d in indexed["documents"]} == {"indexed"}
    assert all(d["status"] == "quarantined" for d in quarantined["documents"])
    assert refused.status_code == 422
    assert {tuple(e["loc"]) for e in refused.json()["errors"]} == {("query", "status"), ("query", "limit")}


def test_reindex_and_listing_refuse_other_tenants_and_pending_files(served):
    with served.client("acme") as acme, served.client("globex") as globex:
        roadmap = next(d for d in acme.get("/v1/documents").json()["documents"] if d["source"].endswith("roadmap.md"))
        refused = globex.post(f"/v1/documents/{roadmap['doc_id']}/reindex")
        assert refused.status_code == 404 and "for this tenant" in refused.json()["detail"]
        upload = acme.post("/v1/documents", files={"file": (f"draft-{uuid.uuid4().hex[:6]}.md", b"# Draft\n\nSoon.")})
        [uploaded] = upload.json()["documents"]
        try:
            pending = acme.get("/v1/documents", params={"status": "pending"}).json()
            assert uploaded["doc_id"] in {d["doc_id"] for d in pending["documents"]}
            assert [d["run"] for d in pending["documents"] if d["doc_id"] == uploaded["doc_id"]] == [None]
            conflict = acme.post(f"/v1/documents/{uploaded['doc_id']}/reindex")
            assert conflict.status_code == 409 and "not indexed yet" in conflict.json()["detail"]
            assert uploaded["doc_id"] not in {d["doc_id"] for d in globex.get("/v1/documents").json()["documents"]}
        finally:
            assert acme.delete(f"/v1/documents/{uploaded['doc_id']}").status_code == 202


def test_query_log_is_tenant_scoped_filtered_and_paged(served):
    token = uuid.uuid4().hex[:10]
    with served.client("acme") as acme, served.client("globex") as globex:
        asked = [
            acme.post("/v1/retrieve", json={"query": f"Project Falcon {token} question {n}", "top_k": 2}).json()
            for n in range(3)
        ]
        given = {"query_id": asked[0]["query_id"], "rating": 2, "comment": "thin"}
        assert acme.post("/v1/feedback", json=given).status_code == 201
        log = acme.get("/v1/logs", params={"text": token}).json()
        first = acme.get("/v1/logs", params={"text": token, "limit": 2}).json()
        rest = acme.get("/v1/logs", params={"text": token, "limit": 2, "offset": 2}).json()
        rated = acme.get("/v1/logs", params={"text": token, "rated": "true"}).json()
        unrated = acme.get("/v1/logs", params={"text": token, "rated": "false", "degraded": "false"}).json()
        later = (datetime.now(UTC) + timedelta(minutes=5)).isoformat()
        future = acme.get("/v1/logs", params={"text": token, "since": later}).json()
        past = acme.get("/v1/logs", params={"text": token, "until": later}).json()
        other = globex.get("/v1/logs", params={"text": token}).json()

    assert log["total"] == 3
    assert [q["query_id"] for q in log["queries"]] == [a["query_id"] for a in reversed(asked)]  # newest first
    oldest = log["queries"][-1]
    assert oldest["question"] == f"Project Falcon {token} question 0"
    assert oldest["chunk_ids"] == [c["chunk_id"] for c in asked[0]["chunks"]]
    assert set(oldest["timings_ms"]) == set(asked[0]["timings_ms"])
    assert oldest["index_version"] == asked[0]["index_version"] and oldest["mode"] == "hybrid"
    assert [(f["rating"], f["comment"]) for f in oldest["feedback"]] == [(2, "thin")]
    assert [q["query_id"] for q in first["queries"] + rest["queries"]] == [q["query_id"] for q in log["queries"]]
    assert [q["query_id"] for q in rated["queries"]] == [asked[0]["query_id"]]
    assert unrated["total"] == 2 and future["total"] == 0 and past["total"] == 3
    assert other == {"total": 0, "offset": 0, "limit": 50, "queries": []}


def test_a_literal_percent_or_underscore_in_the_log_search_matches_only_itself(served):
    token = uuid.uuid4().hex[:8]
    with served.client("globex") as client:
        client.post("/v1/retrieve", json={"query": f"{token} 100% sure", "top_k": 1})
        client.post("/v1/retrieve", json={"query": f"{token} 1000 sure", "top_k": 1})
        assert client.get("/v1/logs", params={"text": f"{token} 100%"}).json()["total"] == 1
        assert client.get("/v1/logs", params={"text": f"{token} 10_0"}).json()["total"] == 0


def test_admin_keys_create_list_revoke_and_the_secret_is_shown_once(served):
    tenant = f"console-{uuid.uuid4().hex[:6]}"
    admin = {"X-Admin-Key": ADMIN_KEY}
    with httpx.Client(base_url=served.url, timeout=60) as client:
        created = client.post("/v1/admin/keys", json={"tenant": tenant, "name": "support bot"}, headers=admin)
        assert created.status_code == 201, created.text
        body = created.json()
        secret = body["key"]
        assert secret.startswith(f"rag_{body['key_id']}_") and body["tenant"] == tenant and not body["revoked"]

        listed = client.get("/v1/admin/keys", params={"tenant": tenant}, headers=admin)
        assert [(k["key_id"], k["name"], k["revoked"]) for k in listed.json()["keys"]] == [
            (body["key_id"], "support bot", False)
        ]
        everyone = client.get("/v1/admin/keys", headers=admin).json()["keys"]
        assert body["key_id"] in {k["key_id"] for k in everyone} and {k["tenant"] for k in everyone} >= {"acme"}
        assert secret not in listed.text and "key" not in listed.json()["keys"][0]

        assert client.get("/v1/documents", headers={"X-API-Key": secret}).json()["total"] == 0  # a new tenant
        revoked = client.delete(f"/v1/admin/keys/{body['key_id']}", headers=admin)
        assert revoked.json() == {"key_id": body["key_id"], "revoked": True}
        assert client.get("/v1/documents", headers={"X-API-Key": secret}).status_code == 401
        assert client.get("/v1/admin/keys", params={"tenant": tenant}, headers=admin).json()["keys"][0]["revoked"]
        assert client.delete("/v1/admin/keys/abcdef123456", headers=admin).status_code == 404
        invalid = client.post("/v1/admin/keys", json={"tenant": "Not A Tenant"}, headers=admin)
        assert invalid.status_code == 422 and invalid.json()["errors"][0]["loc"] == ["body", "tenant"]


def test_admin_routes_answer_401_without_the_admin_key_and_403_to_a_tenant_key(served):
    with httpx.Client(base_url=served.url, timeout=60) as client:
        missing = client.get("/v1/admin/keys")
        wrong = client.post("/v1/admin/keys", json={"tenant": "acme"}, headers={"X-Admin-Key": "guess"})
        tenant_key = client.get("/v1/admin/keys", headers={"X-API-Key": served.keys["acme"]})
    for refused in (missing, wrong):
        assert refused.status_code == 401
        assert refused.json()["detail"] == (
            "missing or wrong admin key — send `X-Admin-Key: <RAG_ADMIN_KEY>` (an API key is not one)"
        )
    assert tenant_key.status_code == 403  # admin keys are distinct from tenant keys
    assert tenant_key.json()["detail"].startswith("a tenant API key cannot use the admin routes")


def test_admin_routes_are_off_until_the_admin_key_is_set(settings):
    server = ServerThread(create_app(settings.model_copy(update={"admin_key": SecretStr("")}))).start(ready=False)
    try:
        with server.client() as client:
            refused = client.get("/v1/admin/keys", headers={"X-Admin-Key": ""})
            also = client.post("/v1/admin/keys", json={"tenant": "acme"}, headers={"X-Admin-Key": "anything"})
    finally:
        server.stop()
    assert refused.status_code == also.status_code == 403
    assert "the admin routes are off — set RAG_ADMIN_KEY" in refused.json()["detail"]
    assert also.json() == refused.json()


def test_documents_are_listed_without_runs_while_the_dagster_instance_cannot_be_read(settings, caplog):
    settings.resolved_dagster_home.mkdir(parents=True)
    unreachable = "postgresql://postgres@127.0.0.1:1/dagster"  # nothing listens on port 1
    (settings.resolved_dagster_home / "dagster.yaml").write_text(
        f"storage:\n  postgres:\n    postgres_url: {unreachable}\n"
    )
    key = ServingDatabase(settings.resolved_serving_db_url).create_key("default")
    server = ServerThread(create_app(settings)).start(ready=False)
    try:
        with server.client(key) as client:
            listed = [client.get("/v1/documents") for _ in range(2)]
    finally:
        server.stop()
    assert [response.status_code for response in listed] == [200, 200]
    documents = listed[0].json()["documents"]
    assert {"getting-started.md", "release-notes.txt"} <= {d["source"] for d in documents}
    assert {(d["status"], d["run"], d["index_version"]) for d in documents} == {("pending", None, "")}
    warnings = [r.getMessage() for r in caplog.records if "could not be read" in r.getMessage()]
    assert len(warnings) == 1 and "DAGSTER_HOME" in warnings[0]  # said once, naming the fix
