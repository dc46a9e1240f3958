"""Settings of the embedded profile under a test's own folder: Milvus Lite, SQLite catalog, serving database
and MLflow under `<root>/data`, Dagster under `<root>/dagster` — no server, no shared state."""

from __future__ import annotations

from pathlib import Path

from rag_core.settings import Settings


def embedded_settings(root: Path, documents: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "data_dir": root / "data",
        "documents_dir": documents,
        "dagster_home": root / "dagster",
        "milvus_uri": "",
        "catalog_url": "",
        "serving_db_url": "",
        "mlflow_tracking_uri": "",
    }
    return Settings(**(values | overrides))
