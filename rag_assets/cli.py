"""`rag` — the command line for the embedded profile: build the index in one batched Dagster run,
show its status, and reconcile drift. Runs are recorded in the Dagster instance under DAGSTER_HOME, so
they appear in the Dagster UI next to the sensor's runs."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter
from pathlib import Path

from rag_core.settings import Settings, get_settings

EMBEDDED_DAGSTER_YAML = """\
# Written by `rag` for the embedded profile: SQLite storage in this folder.
# Milvus Lite lets one process at a time open its file, so index-writing runs queue one at a time.
# The production profile uses infra/dagster.yaml (PostgreSQL storage) instead.
run_queue:
  max_concurrent_runs: 4
  tag_concurrency_limits:
    - key: "rag/index-writer"
      limit: 1
telemetry:
  enabled: false
"""


def prepare_dagster_home(settings: Settings) -> Path:
    home = settings.resolved_dagster_home
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        config.write_text(EMBEDDED_DAGSTER_YAML)
    os.environ["DAGSTER_HOME"] = str(home)
    return home


def _instance(settings: Settings):
    from dagster import DagsterInstance

    prepare_dagster_home(settings)
    return DagsterInstance.get()


def index(settings: Settings, instance=None) -> dict[str, float]:
    """Bring the index in line with the folder in one run: add/remove partitions, then materialize
    every partition (unchanged ones cost a parse and cache lookups, nothing is re-embedded)."""
    from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

    from rag_assets.definitions import build_definitions
    from rag_assets.partitions import documents_partitions
    from rag_assets.resources import build_resources

    started = time.perf_counter()
    instance = instance or _instance(settings)
    definitions = build_definitions(settings)
    keys = [unit.partition_key for unit in build_resources(settings)["sources"].discover()]
    existing = instance.get_dynamic_partitions(documents_partitions.name)
    gone = sorted(set(existing) - set(keys))
    if gone:
        definitions.resolve_job_def("remove_documents_job").execute_in_process(
            run_config={"ops": {"remove_documents": {"config": {"partition_keys": gone}}}}, instance=instance
        )
        for key in gone:
            instance.delete_dynamic_partition(documents_partitions.name, key)
    new = [key for key in keys if key not in set(existing)]
    if new:
        instance.add_dynamic_partitions(documents_partitions.name, new)
    ordered = instance.get_dynamic_partitions(documents_partitions.name)
    if not ordered:
        raise SystemExit(f"no supported files in {settings.documents_dir} — add .md/.txt/.html/.pdf/.docx/.jsonl files")
    result = definitions.resolve_job_def("index_documents_job").execute_in_process(
        instance=instance,
        run_config={"loggers": {"console": {"config": {"log_level": "INFO"}}}},
        tags={ASSET_PARTITION_RANGE_START_TAG: ordered[0], ASSET_PARTITION_RANGE_END_TAG: ordered[-1]},
    )
    metadata = {}
    for event in result.get_asset_materialization_events():
        materialization = event.step_materialization_data.materialization
        metadata[materialization.asset_key.to_user_string()] = {
            key: value.value for key, value in materialization.metadata.items()
        }
    return {
        "partitions": len(ordered),
        "removed_partitions": len(gone),
        "documents": metadata.get("raw_documents", {}).get("documents", 0),
        "quarantined": metadata.get("raw_documents", {}).get("quarantined", 0),
        "chunks": metadata.get("document_chunks", {}).get("chunks", 0),
        "embedded": metadata.get("chunk_embeddings", {}).get("computed", 0),
        "vectors": metadata.get("milvus_collection", {}).get("collection_rows", 0),
        "seconds": round(time.perf_counter() - started, 1),
    }


def status(settings: Settings) -> dict[str, object]:
    from rag_assets.resources import build_resources

    resources = build_resources(settings)
    entries = resources["catalog"].get().entries()
    with resources["milvus"].store() as store:
        served = store.alias_target()
        rows = store.count(served) if served else 0
        properties = store.collection_properties(served) if served else {}
    return {
        "documents_dir": str(settings.documents_dir.resolve()),
        "partitions": dict(Counter(entry.status for entry in entries.values())),
        "quarantined": [item for entry in entries.values() for item in entry.quarantined],
        "alias": settings.collection_alias,
        "served_collection": served,
        "rows": rows,
        "embedding_version": properties.get("rag.embedding_version"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rag", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("index", help="index the documents folder (one batched Dagster run)")
    build.add_argument("--documents-dir", type=Path, help="overrides RAG_DOCUMENTS_DIR")
    commands.add_parser("status", help="what is indexed, quarantined and served")
    commands.add_parser("reconcile", help="repair drift between the folder, Dagster and Milvus now")
    args = parser.parse_args(argv)

    settings = get_settings()
    if getattr(args, "documents_dir", None):
        settings = settings.model_copy(update={"documents_dir": args.documents_dir})
    if args.command == "index":
        summary = index(settings)
        print(
            f"\nIndexed {summary['documents']} documents from {summary['partitions']} source partitions "
            f"into {summary['chunks']} chunks; {summary['embedded']} embedded now, "
            f"{summary['vectors']} vectors in Milvus; {summary['quarantined']} quarantined; "
            f"{summary['seconds']} s."
        )
        print(
            f"Open the Dagster UI:  DAGSTER_HOME={settings.resolved_dagster_home} "
            ".venv/bin/dagster dev -w workspace.yaml   (then http://127.0.0.1:3000)"
        )
    elif args.command == "status":
        for key, value in status(settings).items():
            print(f"{key:>18}: {value}")
    elif args.command == "reconcile":
        from rag_assets.definitions import build_definitions

        instance = _instance(settings)
        result = build_definitions(settings).resolve_job_def("reconcile_job").execute_in_process(instance=instance)
        return 0 if result.success else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
