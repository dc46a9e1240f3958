"""`/docs` in headless Chromium with every request off this machine refused: Swagger UI loads from the app
itself, "Authorize" takes an API key, and Try-it-out on /v1/retrieve returns 200 with chunks."""

from __future__ import annotations

from urllib.parse import urlparse

import pytest

from tests.e2e.test_web_page import page  # noqa: F401 - the Chromium page fixture

pytestmark = pytest.mark.slow


def test_docs_work_offline_and_try_it_out_succeeds_after_authorize(served, page, tmp_path):  # noqa: F811
    from playwright.sync_api import expect

    refused: list[str] = []

    def offline(route) -> None:  # as on a machine with no internet: only the API itself answers
        if urlparse(route.request.url).hostname in ("127.0.0.1", "localhost"):
            route.continue_()
        else:
            refused.append(route.request.url)
            route.abort()

    page.route("**/*", offline)
    page.goto(served.url + "/docs")
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("RAG platform API")

    page.click("button.authorize")
    api_key = page.locator(".auth-container").filter(has_text="X-API-Key")
    api_key.locator("input").fill(served.keys["default"])
    api_key.locator("button.authorize").click()
    expect(api_key).to_contain_text("Authorized")
    page.click("button.btn-done")

    retrieve = page.locator(".opblock-post").filter(has_text="/v1/retrieve").first
    retrieve.locator(".opblock-summary").click()
    retrieve.locator("button.try-out__btn").click()
    retrieve.locator("button.execute").click()
    status = retrieve.locator(".live-responses-table .response .response-col_status").first
    expect(status).to_have_text("200", timeout=120_000)
    expect(retrieve.locator(".live-responses-table .response .response-col_description")).to_contain_text('"chunks"')
    page.screenshot(path=str(tmp_path / "api-docs.png"), full_page=True)
    assert refused == [], refused  # nothing was fetched from elsewhere (no CDN)
