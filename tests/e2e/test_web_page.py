"""The web page end to end in headless Chromium (Debian's /usr/bin/chromium driven by Playwright)."""

import os
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.conftest import service_missing

pytestmark = pytest.mark.slow
CHROMIUM = os.environ.get("RAG_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


ASKED = """() => !document.getElementById("submit").disabled && (
    document.getElementById("feedback").style.display === "flex" || document.getElementById("error").textContent
)"""


@pytest.fixture
def page(tmp_path):
    if not Path(CHROMIUM).exists():
        service_missing(
            f"Chromium is not installed at {CHROMIUM} — apt-get install chromium (or set RAG_TEST_CHROMIUM)"
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        try:
            yield browser.new_page()
        finally:
            browser.close()


def test_ask_see_streamed_cited_answer_click_citation_and_give_feedback(served, page, tmp_path):
    from playwright.sync_api import expect

    page.goto(served.url + "/")
    page.fill("#apikey", served.keys["default"])
    page.fill("#question", "What does the embedding cache key on?")
    page.click("#submit")
    # The page's own outcome signal: the request ended (the button is enabled again) with feedback or an
    # error shown. No fixed budget: the server's timeouts bound the request, however busy the machine is.
    page.wait_for_function(ASKED, timeout=0)
    expect(page.locator("#error")).to_have_text("")
    expect(page.locator("#feedback")).to_be_visible()
    expect(page.locator("#sources .source")).to_have_count(5)
    citation = page.locator("#answer a.cite").first
    expect(citation).to_be_visible()
    number = citation.get_attribute("data-source")
    citation.click()
    expect(page.locator(f"#source-{number}")).to_have_class("source highlight")
    assert "embedding" in page.locator(f"#source-{number}").inner_text().lower()

    page.click("#thumbs-up")
    expect(page.locator("#feedback-status")).to_have_text("Thanks for the feedback.")
    page.screenshot(path=str(tmp_path / "web-page.png"), full_page=True)

    engine = sa.create_engine(served.settings.resolved_serving_db_url)
    with engine.connect() as connection:
        row = connection.execute(
            sa.text(
                "SELECT q.question, f.rating, f.is_relevant FROM rag_feedback f "
                "JOIN rag_queries q ON q.query_id = f.query_id ORDER BY f.feedback_id DESC LIMIT 1"
            )
        ).one()
    engine.dispose()
    assert tuple(row) == ("What does the embedding cache key on?", 5, True)


def test_errors_are_shown_on_the_page(served, page):
    from playwright.sync_api import expect

    page.goto(served.url + "/")
    page.fill("#apikey", "rag_wrong_key")
    page.fill("#question", "anything")
    page.click("#submit")
    expect(page.locator("#error")).to_contain_text("invalid or revoked API key")
