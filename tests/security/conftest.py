"""`hardened`: a second app over the served index, on a real HTTP port, with its query log, feedback and keys
in a throw-away PostgreSQL database (where a NUL used to give 500) and a documents folder of its own (its
uploads never reach the served corpus). Its limits differ from the defaults, so tests can tell that the
OpenAPI schema and validation follow the app's settings."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from rag_core.querylog import ServingDatabase
from rag_core.settings import Settings
from rag_serving.app import create_app
from tests.conftest import POSTGRES_URL, service_missing
from tests.serving_server import ServerThread


@dataclass
class Hardened:
    settings: Settings
    server: ServerThread
    key: str
    database_url: str

    @property
    def url(self) -> str:
        return self.server.url

    def client(self, key: str | None = None):
        return self.server.client(self.key if key is None else key)

    @property
    def documents(self) -> Path:
        return self.settings.documents_dir


@pytest.fixture(scope="session")
def throwaway_postgres() -> Iterator[str]:
    import sqlalchemy as sa

    admin = sa.create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect():
            pass
    except sa.exc.OperationalError as error:
        service_missing(f"PostgreSQL is not reachable at {POSTGRES_URL} ({type(error).__name__}) — start it")
    name = f"rag_test_{uuid.uuid4().hex[:10]}"
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield POSTGRES_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def hardened(served, throwaway_postgres, tmp_path_factory) -> Iterator[Hardened]:
    database = ServingDatabase(throwaway_postgres)
    key = database.create_key("default", "hardening")
    database.close()
    settings = served.settings.model_copy(
        update={
            "serving_db_url": throwaway_postgres,
            "documents_dir": tmp_path_factory.mktemp("hardened-documents"),
            "rate_limit_per_minute": 0,
            "auth_failures_per_minute": 0,
            "max_top_k": 20,
            "max_query_chars": 500,
            "max_request_bytes": 200_000,
            "upload_max_mb": 2.0,
        }
    )
    server = ServerThread(create_app(settings)).start()
    try:
        yield Hardened(settings, server, key, throwaway_postgres)
    finally:
        server.stop()
