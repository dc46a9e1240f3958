"""The served index: the fixture corpus (plus two tenants' private files) materialized by the assets,
then the real app over it on a real HTTP port, with the real Redis and API keys per tenant."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from dagster import instance_for_test

from rag_assets.cli import index
from rag_core.querylog import ServingDatabase
from rag_core.settings import Settings
from rag_serving.app import create_app
from tests.conftest import FIXTURES, REDIS_URL, service_missing
from tests.serving_server import ServerThread

ADMIN_KEY = "test-admin-key-for-the-console"  # RAG_ADMIN_KEY of the served app (the console's admin page)
TENANT_FILES = {
    "tenant=acme/acme-roadmap.md": "# Acme roadmap\n\nProject Falcon ships the quantum widget in March.",
    "tenant=globex/globex-plan.md": "# Globex plan\n\nProject Heron ships the quantum gadget in June.",
}


@dataclass
class Served:
    settings: Settings
    server: ServerThread
    keys: dict[str, str]
    instance: object

    @property
    def url(self) -> str:
        return self.server.url

    def client(self, tenant: str = "default"):
        return self.server.client(self.keys[tenant])


def redis_available(url: str) -> None:
    import redis

    try:
        redis.Redis.from_url(url, socket_connect_timeout=1).ping()
    except redis.exceptions.ConnectionError as error:
        service_missing(f"Redis is not reachable at {url} ({error}) — start redis-server or set REDIS_URL")


def build_served_corpus(root: Path) -> Path:
    documents = root / "documents"
    shutil.copytree(FIXTURES / "corpus", documents)
    for relative, text in TENANT_FILES.items():
        (documents / relative).parent.mkdir(parents=True, exist_ok=True)
        (documents / relative).write_text(text)
    return documents


# A tenant only test_feedback_and_analytics rates: the other tests' feedback never lands in its figures.
ANALYTICS_TENANT = "analytics"


@pytest.fixture(scope="session")
def served(tmp_path_factory) -> Served:
    redis_available(REDIS_URL)
    root = tmp_path_factory.mktemp("served")
    settings = Settings(
        data_dir=root / "data",
        documents_dir=build_served_corpus(root),
        dagster_home=root / "dagster",
        redis_url=REDIS_URL,
        rate_limit_per_minute=10_000,
        alias_poll_s=0.5,
        admin_key=ADMIN_KEY,
    )
    settings.resolved_dagster_home.mkdir(parents=True)
    with instance_for_test(temp_dir=str(settings.resolved_dagster_home)) as instance:
        index(settings, instance=instance)
        database = ServingDatabase(settings.resolved_serving_db_url)
        keys = {
            tenant: database.create_key(tenant, f"test {tenant}")
            for tenant in ("default", "acme", "globex", ANALYTICS_TENANT)
        }
        server = ServerThread(create_app(settings)).start()
        try:
            yield Served(settings, server, keys, instance)
        finally:
            server.stop()
