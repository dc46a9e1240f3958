"""Shared fixtures. Tests use the real components: Milvus Lite files, Dagster instances on disk,
the bundled MiniLM model, PostgreSQL at 127.0.0.1:5432 and Redis at 127.0.0.1:6379."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from rag_core.settings import Settings  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures"
# The served index (materialized by the assets, behind a real HTTP server) shared by integration and e2e.
pytest_plugins = ["tests.served"]
POSTGRES_URL = os.environ.get("RAG_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
# `make test` runs two pytest-xdist workers. Each takes its own Redis database, so that two apps over
# identical builds (the same collection names and cache keys) never read each other's cache or limits.
XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
REDIS_URL = f"redis://127.0.0.1:6379/{int(XDIST_WORKER.removeprefix('gw'))}"


def _settings_variables() -> frozenset[str]:
    """Every environment variable Settings reads: RAG_<FIELD> and the aliases (DAGSTER_HOME, MILVUS_URI, …)."""
    from pydantic import AliasChoices

    names = {f"RAG_{name.upper()}" for name in Settings.model_fields}
    for field in Settings.model_fields.values():
        if isinstance(field.validation_alias, AliasChoices):
            names.update(str(choice) for choice in field.validation_alias.choices)
    return frozenset(names)


SETTINGS_VARIABLES = _settings_variables()


@pytest.fixture(autouse=True)
def _settings_environment_restored() -> Iterator[None]:
    """Code under test may set a variable Settings reads: `mlflow.set_tracking_uri` (every Tracker calls it)
    exports MLFLOW_TRACKING_URI, the CLI exports DAGSTER_HOME. Left set, one test's MLflow store or Dagster home
    would become every later test's in that process; each test starts from the environment as it was."""
    before = {name: os.environ.get(name) for name in SETTINGS_VARIABLES}
    yield
    for name, value in before.items():
        if value is None:
            os.environ.pop(name, None)
        elif os.environ.get(name) != value:
            os.environ[name] = value


def service_missing(message: str) -> None:
    """In CI a missing service is a failure; on a laptop the test is skipped, saying what to start."""
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture
def corpus_dir(tmp_path: Path) -> Path:
    target = tmp_path / "documents"
    shutil.copytree(FIXTURES / "corpus", target)
    return target


@pytest.fixture
def settings(tmp_path: Path, corpus_dir: Path) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        documents_dir=corpus_dir,
        dagster_home=tmp_path / "dagster",
        milvus_uri="",
        catalog_url="",
        collection_alias="rag_chunks",
        milvus_lock_timeout_s=30,
    )


@pytest.fixture
def postgres_admin_url() -> str:
    import sqlalchemy as sa

    try:
        engine = sa.create_engine(POSTGRES_URL)
        with engine.connect():
            pass
    except sa.exc.OperationalError as error:
        service_missing(
            f"PostgreSQL is not reachable at {POSTGRES_URL} ({type(error).__name__}) — start it "
            "(pg_ctlcluster ... start) or set RAG_TEST_POSTGRES_URL"
        )
    return POSTGRES_URL


@pytest.fixture
def postgres_database(postgres_admin_url: str) -> Iterator[str]:
    """A fresh, throw-away database on the real server."""
    import sqlalchemy as sa

    name = f"rag_test_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(postgres_admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = postgres_admin_url.rsplit("/", 1)[0] + f"/{name}"
    yield url
    with admin.connect() as connection:
        connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


# The modules each pytest-xdist worker ran, in order: printed after a failing run only. A module can leave state
# in its worker's process that a later one reads; this says which modules shared the failing test's process.
_WORKER_MODULES: dict[str, list[str]] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    node = getattr(report, "node", None)  # set on the controller's copy of a worker's report
    worker = getattr(getattr(node, "gateway", None), "id", None)
    if worker is None or report.when != "setup":
        return
    modules = _WORKER_MODULES.setdefault(worker, [])
    module = report.nodeid.split("::", 1)[0]
    if not modules or modules[-1] != module:
        modules.append(module)


def pytest_terminal_summary(terminalreporter, exitstatus: int) -> None:
    if exitstatus == 0 or not _WORKER_MODULES:
        return
    terminalreporter.section("modules per worker, in order")
    for worker, modules in sorted(_WORKER_MODULES.items()):
        terminalreporter.write_line(f"{worker}: {' '.join(modules)}")
