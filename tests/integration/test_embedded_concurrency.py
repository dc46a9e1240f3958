"""The embedded profile never locks itself out: `rag-serve` runs as its own process on the default Milvus
Lite file while `rag index` writes it, and the new document is served within seconds, without a restart."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from rag_assets.cli import index
from rag_core.querylog import ServingDatabase
from rag_core.settings import Settings
from tests.conftest import FIXTURES
from tests.serving_server import free_port
from tests.support.processes import stop_process
from tests.support.waiting import wait_for

pytestmark = pytest.mark.slow


def test_the_api_serves_while_rag_index_writes_the_same_lite_file(tmp_path):
    documents = tmp_path / "documents"
    documents.mkdir()
    (documents / "notes.md").write_text((FIXTURES / "corpus" / "getting-started.md").read_text())
    # A short lock timeout: had the server held the Lite file, indexing would fail fast instead of waiting.
    settings = Settings(
        data_dir=tmp_path / "data", documents_dir=documents, dagster_home=tmp_path / "dagster", milvus_lock_timeout_s=5
    )
    settings.resolved_dagster_home.mkdir(parents=True)
    index(settings)
    key = ServingDatabase(settings.resolved_serving_db_url).create_key("default", "test")
    port = free_port()
    environment = {
        **os.environ,
        "RAG_DATA_DIR": str(settings.data_dir),
        "RAG_DOCUMENTS_DIR": str(documents),
        "RAG_ALIAS_POLL_S": "0.5",
        "REDIS_URL": "",
    }
    server = subprocess.Popen(
        [Path(sys.executable).with_name("rag-serve"), "serve", "--port", str(port), "--workers", "1"],
        env=environment,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        ready = wait_for("the API is ready", lambda: _status(f"{url}/ready") == 200, timeout_s=300, every_s=0.5)
        assert ready
        (documents / "otters.md").write_text("# Otters\n\nSea otters hold hands while they sleep in kelp forests.")
        summary = index(settings)  # another process than the server: the Lite file's lock is free
        assert summary["documents"] == 2

        def otters_served() -> bool:
            response = httpx.post(
                f"{url}/v1/retrieve",
                headers={"X-API-Key": key},
                json={"query": "otters sleeping in kelp", "top_k": 3},
                timeout=30,
            )
            return any(chunk["source"] == "otters.md" for chunk in response.json()["chunks"])

        assert wait_for("the new document is served without a restart", otters_served, timeout_s=30, every_s=0.2)
        ready = httpx.get(f"{url}/ready", headers={"X-API-Key": key}, timeout=10)  # details need a key
        assert ready.json()["search_engine"] == "memory"
    finally:
        stop_process(server)


def _status(url: str) -> int:
    try:
        return httpx.get(url, timeout=5).status_code
    except httpx.HTTPError:
        return 0
