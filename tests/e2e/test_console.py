"""The console in headless Chromium, offline (only the API answers), on the served index: the knowledge base
(drag-and-drop upload → pending → indexed by the real sensor runs, re-index, delete), the query log with its
feedback and the analytics charts, and API key management behind the admin key. Each page is screenshotted
into the test artifacts (RAG_TEST_ARTIFACTS, default tests/artifacts/)."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from urllib.parse import urlparse

import httpx
import pytest

from rag_core.querylog import ServingDatabase
from tests.e2e.test_web_page import page  # noqa: F401 - the Chromium page fixture
from tests.integration.pipeline_helpers import apply_sensor_result, sensor_tick
from tests.served import ADMIN_KEY

pytestmark = pytest.mark.slow
ARTIFACTS = Path(os.environ.get("RAG_TEST_ARTIFACTS", Path(__file__).parents[1] / "artifacts"))
# What a browser may wait for: a sensor run on a busy 2-core machine, then the page's 2 s refresh.
INDEXED_WITHIN_MS = 120_000


@pytest.fixture
def console(page):  # noqa: F811
    """The Chromium page with every request off this machine refused (the console needs no CDN)."""
    refused: list[str] = []

    def offline(route) -> None:
        if urlparse(route.request.url).hostname in ("127.0.0.1", "localhost"):
            route.continue_()
        else:
            refused.append(route.request.url)
            route.abort()

    page.set_viewport_size({"width": 1280, "height": 860})
    page.route("**/*", offline)
    yield page
    assert refused == [], refused


def screenshot(tab, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    tab.screenshot(path=str(ARTIFACTS / f"console-{name}.png"), full_page=True)


def use_key(tab, key: str) -> None:
    tab.fill("#api-key", key)
    tab.click("#use-key")


def drop_files(tab, files: dict[str, str]) -> None:
    """A real drop event on the drop zone, carrying `files` (name → text) in its DataTransfer."""
    transfer = tab.evaluate_handle(
        """(files) => {
            const transfer = new DataTransfer();
            for (const [name, text] of Object.entries(files)) transfer.items.add(new File([text], name));
            return transfer;
        }""",
        files,
    )
    tab.dispatch_event("#dropzone", "drop", {"dataTransfer": transfer})


def run_the_sensor(served) -> None:
    """What the Dagster daemon does on a tick: the sensor's partitions and runs, in this process."""
    apply_sensor_result(served.settings, served.instance, sensor_tick(served.settings, served.instance))


def test_knowledge_base_upload_pending_indexed_reindex_and_delete(served, console):
    from playwright.sync_api import expect

    tenant = f"kb-{uuid.uuid4().hex[:6]}"
    key = ServingDatabase(served.settings.resolved_serving_db_url).create_key(tenant, "console test")
    console.goto(served.url + "/")
    console.click("#console-link a")
    expect(console.locator("nav a[aria-current=page]")).to_have_text("Knowledge base")
    assert console.locator("nav a").all_inner_texts()[:3] == ["Knowledge base", "Logs & feedback", "Admin"]
    use_key(console, key)
    expect(console.locator("#documents")).to_contain_text("No documents match.")

    drop_files(console, {"osprey-notes.md": "# Osprey\n\nThe osprey project ships in May.", "broken.pdf": "%PDF-1.4 x"})
    expect(console.locator("#docs-message")).to_contain_text("pending until the sensor indexes it")
    rows = console.locator("#documents tr")
    expect(rows).to_have_count(2)
    note = rows.filter(has_text="osprey-notes.md")
    broken = rows.filter(has_text="broken.pdf")
    expect(note.locator(".status")).to_have_text("pending")
    expect(console.locator("#live")).to_contain_text("Indexing in progress")

    run_the_sensor(served)
    # The page refreshes itself while something is pending: no reload.
    expect(note.locator(".status")).to_have_text("indexed", timeout=INDEXED_WITHIN_MS)
    expect(broken.locator(".status")).to_have_text("quarantined", timeout=INDEXED_WITHIN_MS)
    expect(broken.locator(".reason")).not_to_be_empty()
    expect(note.locator("td").nth(2)).to_have_text("1")  # chunks
    expect(broken.locator("td").nth(5)).to_have_text("not served")  # no rows of it in the served build
    expect(note.locator(".run-link")).to_contain_text("success")
    assert note.locator(".run-link").get_attribute("href").startswith("http://127.0.0.1:3000/runs/")
    expect(console.locator("#live")).to_have_text("")
    screenshot(console, "knowledge-base")

    console.fill("#doc-search", "osprey")
    console.click("#doc-filters button[type=submit]")
    expect(rows).to_have_count(1)
    console.fill("#doc-search", "")
    console.select_option("#doc-status", "quarantined")
    console.click("#doc-filters button[type=submit]")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("broken.pdf")
    console.select_option("#doc-status", "")
    console.click("#doc-filters button[type=submit]")

    note.locator("button.reindex").click()
    expect(note.locator(".status")).to_have_text("stale")
    run_the_sensor(served)
    expect(note.locator(".status")).to_have_text("indexed", timeout=INDEXED_WITHIN_MS)

    console.on("dialog", lambda dialog: dialog.accept())
    for row in (note, broken):
        row.locator("button.delete").click()
        expect(row).to_have_count(0)
    expect(console.locator("#documents")).to_contain_text("No documents match.")
    run_the_sensor(served)  # removes the vectors: the served index is as before
    assert not (served.settings.documents_dir / f"tenant={tenant}" / "osprey-notes.md").exists()


def test_log_view_shows_a_query_with_its_feedback_and_the_analytics_charts(served, console):
    from playwright.sync_api import expect

    token = uuid.uuid4().hex[:8]
    question = f"When does Project Falcon ship? ({token})"
    with served.client("acme") as client:
        answered = client.post("/v1/query", json={"query": question, "top_k": 3})
        assert answered.status_code == 200, answered.text
        query_id = answered.json()["query_id"]
        given = {"query_id": query_id, "rating": 4, "is_relevant": True, "comment": "clear answer"}
        assert client.post("/v1/feedback", json=given).status_code == 201

    console.goto(served.url + "/console/logs.html")
    use_key(console, served.keys["acme"])
    console.fill("#log-text", token)
    console.click("#log-filters button[type=submit]")
    row = console.locator(f'#queries tr[data-query-id="{query_id}"]')
    expect(row).to_contain_text(question)
    expect(row).to_contain_text("rating 4/5, relevant, “clear answer”")
    expect(row.locator(".stages li").first).to_contain_text(" ms")
    expect(row).to_contain_text(answered.json()["index_version"])
    expect(row).to_contain_text(answered.json()["model"])
    expect(console.locator("#queries tr")).to_have_count(1)

    charts = console.locator("#charts figure.chart")
    expect(charts).to_have_count(3)
    expect(charts.nth(0).locator("rect.bar")).to_have_count(3)
    expect(charts.nth(1)).to_contain_text("Lowest-rated questions")
    expect(charts.nth(2).locator("rect.bar").first).to_be_visible()
    expect(console.locator("#totals")).to_contain_text("queries")
    screenshot(console, "logs")

    console.select_option("#log-rated", "false")
    console.click("#log-filters button[type=submit]")
    expect(console.locator("#queries")).to_contain_text("No queries match.")


def test_admin_page_creates_lists_and_revokes_keys_and_shows_the_secret_once(served, console):
    from playwright.sync_api import expect

    tenant = f"adm-{uuid.uuid4().hex[:6]}"
    console.goto(served.url + "/console/admin.html")
    console.fill("#admin-key", "not the admin key")
    console.click("#use-admin-key")
    expect(console.locator("#admin-message")).to_contain_text("401: missing or wrong admin key")
    expect(console.locator("#keys tr")).to_have_count(0)

    console.fill("#admin-key", ADMIN_KEY)
    console.click("#use-admin-key")
    expect(console.locator("#keys tr").filter(has_text="acme").first).to_be_visible()
    console.fill("#new-tenant", tenant)
    console.fill("#new-name", "ci bot")
    console.click("#create-key")
    secret = console.locator("#secret-value")
    expect(secret).to_contain_text("rag_")
    plain = secret.inner_text().strip()
    row = console.locator("#keys tr").filter(has_text=tenant)
    expect(row).to_contain_text("ci bot")
    expect(row.locator(".status")).to_have_text("active")
    screenshot(console, "admin")
    with httpx.Client(base_url=served.url, headers={"X-API-Key": plain}, timeout=60) as client:
        assert client.get("/v1/documents").status_code == 200

    console.reload()  # the secret is gone for good: not on the page, not in the list
    expect(row).to_contain_text("ci bot")
    expect(console.locator("#new-secret")).to_be_hidden()
    assert plain not in console.content()

    row.locator("button.revoke").click()
    expect(row.locator(".status")).to_have_text("revoked")
    expect(console.locator("#admin-message")).to_contain_text(f"of {tenant}")
    with httpx.Client(base_url=served.url, headers={"X-API-Key": plain}, timeout=60) as client:
        assert client.get("/v1/documents").status_code == 401
