"""`rag` — the command line for the embedded profile: build the index in one batched Dagster run,
show its status, and reconcile drift. Runs are recorded in the Dagster instance under DAGSTER_HOME, so
they appear in the Dagster UI next to the sensor's runs."""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
import time
from collections import Counter
from pathlib import Path

from pydantic import SecretStr

from rag_assets import experiment_cli, tenant_cli
from rag_core.errors import Refusal
from rag_core.settings import Settings, environment_variable, settings_or_exit

GENERATED_HEADER = "# Written by `rag` for the embedded profile"
EMBEDDED_DAGSTER_YAML = f"""\
{GENERATED_HEADER}: SQLite storage in this folder. `rag` rewrites this file when
# its template changes; remove this first line to keep your own edits.
# Milvus Lite lets one process at a time open its file, so index-writing runs queue one at a time.
# The production profile uses infra/dagster.yaml (PostgreSQL storage) instead.
run_queue:
  max_concurrent_runs: 4
  tag_concurrency_limits:
    - key: "rag/index-writer"
      limit: 1
# A failed run, or one that never started, is run again from its failed steps. Jobs opt in with their
# `dagster/max_retries` tag (the index jobs do); evaluation and training runs are not repeated.
run_retries:
  enabled: true
  max_retries: 0
# A run still starting after 5 minutes (a code server slow to load on a busy machine) is marked failed,
# so that its retry begins instead of the run waiting forever.
run_monitoring:
  enabled: true
  start_timeout_seconds: 300
  poll_interval_seconds: 30
telemetry:
  enabled: false
"""


def prepare_dagster_home(settings: Settings) -> Path:
    home = settings.resolved_dagster_home
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    # A file `rag` wrote follows the template (an older one gains run retries); one the user wrote is theirs.
    current = config.read_text() if config.exists() else ""
    if current != EMBEDDED_DAGSTER_YAML and (not current or current.startswith(GENERATED_HEADER)):
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

    from rag_assets.assets.indexing import build_tags
    from rag_assets.definitions import build_definitions
    from rag_assets.partitions import documents_partitions
    from rag_assets.resources import build_resources

    started = time.perf_counter()
    instance = instance or _instance(settings)
    definitions = build_definitions(settings)
    resources = build_resources(settings)
    _say(f"discovering sources in {settings.documents_dir.resolve()} …")
    keys = [unit.partition_key for unit in resources["sources"].discover()]
    existing = instance.get_dynamic_partitions(documents_partitions.name)
    gone = sorted(set(existing) - set(keys))
    _say(f"{len(keys)} source partitions; {len(set(keys) - set(existing))} new, {len(gone)} gone")
    if gone:
        _run(
            settings,
            definitions.resolve_job_def("remove_documents_job"),
            instance,
            {"ops": {"remove_documents": {"config": {"partition_keys": gone}}}},
            raise_on_error=True,
        )
        for key in gone:
            instance.delete_dynamic_partition(documents_partitions.name, key)
    new = [key for key in keys if key not in set(existing)]
    if new:
        instance.add_dynamic_partitions(documents_partitions.name, new)
    ordered = instance.get_dynamic_partitions(documents_partitions.name)
    if not ordered:
        raise SystemExit(f"no supported files in {settings.documents_dir} — add .md/.txt/.html/.pdf/.docx/.jsonl files")
    range_tags = {ASSET_PARTITION_RANGE_START_TAG: ordered[0], ASSET_PARTITION_RANGE_END_TAG: ordered[-1]}
    _say("deciding the build (model, chunking, target collection) …")
    build = build_tags(resources["embedder"].decide_build())  # the build, decided once
    result = _run(
        settings,
        definitions.resolve_job_def("index_documents_job"),
        instance,
        tags={**range_tags, **build},
        raise_on_error=True,
    )
    metadata = _materializations(result)
    # The in-memory engine's snapshot of what was just written: every API worker loads it in seconds.
    _run(settings, definitions.resolve_job_def("search_index_job"), instance, raise_on_error=True)
    return {
        "partitions": len(ordered),
        "removed_partitions": len(gone),
        # each partition's event carries its own counts; the run's totals are the `run_*` keys on every one
        "documents": metadata.get("raw_documents", {}).get("run_documents", 0),
        "quarantined": metadata.get("raw_documents", {}).get("run_quarantined", 0),
        "chunks": metadata.get("document_chunks", {}).get("run_chunks", 0),
        "embedded": metadata.get("chunk_embeddings", {}).get("run_computed", 0),
        "vectors": metadata.get("milvus_collection", {}).get("collection_rows", 0),
        "seconds": round(time.perf_counter() - started, 1),
    }


def status(settings: Settings) -> dict[str, object]:
    """What is indexed, pending, quarantined and served, from the catalog, the folder and the served build's
    record: no Dagster, no model, and on Milvus Lite no opening of its file, so it answers in seconds, also
    while a run writes."""
    from rag_core.catalog import Catalog
    from rag_core.documents import ParseLimits, discover_sources

    entries = Catalog(settings.resolved_catalog_url).entries()
    limits = ParseLimits(
        settings.max_file_mb, settings.max_expanded_mb, settings.max_compression_ratio, settings.max_document_chars
    )
    folder, tenant, shard_size = settings.documents_dir, settings.default_tenant, settings.jsonl_shard_size
    found = discover_sources(folder, tenant, shard_size, limits) if folder.is_dir() else []
    units = {unit.partition_key: unit for unit in found}
    sources = [_source_row(key, units.get(key), entries.get(key)) for key in sorted(set(units) | set(entries))]
    served, rows, version = _served_build(settings, entries)
    missing = "" if folder.is_dir() else " (missing: create it or set RAG_DOCUMENTS_DIR)"
    return {
        "documents_dir": f"{folder.resolve()}{missing}",
        "partitions": dict(Counter(str(row["status"]).split(" ")[0] for row in sources)),
        "documents": sum(entry.documents for entry in entries.values()),
        "quarantined": [item for entry in entries.values() for item in entry.quarantined],
        "alias": settings.collection_alias,
        "served_collection": served,
        "rows": rows,
        "embedding_version": version,
        "sources": sources,
    }


def _source_row(key: str, unit, entry) -> dict[str, object]:
    """One partition: the catalog's status when it holds the file as it is now, else what will happen to it."""
    if entry is None:
        state = "pending (new: the sensor or `rag index` indexes it)"
    elif unit is None:
        state = "gone (the file was removed: its vectors go at the next run)"
    elif unit.content_hash != entry.content_hash and entry.status != "stale":
        state = "pending (changed since it was indexed)"
    else:
        state = entry.status
    source = unit.relative_path if unit else entry.source
    return {
        "partition_key": key,
        "source": source,
        "status": state,
        "documents": entry.documents if entry else 0,
        "chunks": entry.chunks if entry else 0,
    }


def _served_build(settings: Settings, entries) -> tuple[str | None, int, str | None]:
    """(served collection, rows, embedding version). On Milvus Lite from the search log and the catalog (the
    file stays free for writers); on a Milvus server from Milvus itself."""
    from rag_core.build_record import BuildRecord
    from rag_core.search import published

    if published.is_lite_uri(settings.resolved_milvus_uri):
        served = published.alias_target(settings.search_dir, settings.collection_alias)
        recorded = published.properties(settings.search_dir, served) if served else None
        rows = sum(entry.chunks for entry in entries.values() if served and entry.collection == served)
        return served, rows, BuildRecord.from_properties(recorded[0]).embedding_version if recorded else None
    from rag_core.search.engines import IndexConnection

    with IndexConnection.from_settings(settings).store() as store:
        served = store.alias_target()
        rows = store.count(served) if served else 0
        record = store.record(served) if served else None
    return served, rows, record.embedding_version if record else None


def _materialize(settings: Settings, job_name: str, run_config: dict | None = None, instance=None):
    """Runs a job of the code location in this process, recorded in the Dagster instance (and the UI)."""
    from rag_assets.definitions import build_definitions

    instance = instance or _instance(settings)
    return _run(settings, build_definitions(settings).resolve_job_def(job_name), instance, run_config)


def _run(settings: Settings, job, instance, run_config: dict | None = None, tags=None, raise_on_error=False):
    """A job in this process with its steps shown as they go; its full event log under `$RAG_DATA_DIR/logs`."""
    from rag_assets.progress import run_with_progress

    logs = settings.data_dir.resolve() / "logs"
    return run_with_progress(job, instance, logs, run_config, tags, raise_on_error)


def _say(line: str) -> None:
    """Progress goes to stderr, so stdout carries only a command's result."""
    print(line, file=sys.stderr, flush=True)


def dagster_ui_command(settings: Settings) -> str:
    """`dagster dev` with the environment this command ran with, so the UI's code location sees the same
    data dir, documents, Milvus and models. Secrets are passed by reference, never printed."""
    root = Path(__file__).resolve().parents[1]
    values = {"RAG_DATA_DIR": str(settings.data_dir.resolve()), "DAGSTER_HOME": str(settings.resolved_dagster_home)}
    for name in sorted(settings.model_fields_set - {"data_dir", "dagster_home"}):
        variable, value = environment_variable(name), getattr(settings, name)
        if isinstance(value, SecretStr) or name.endswith(("_key", "_token")):
            values[variable] = f'"${variable}"'
            continue
        text = str(value.resolve()) if isinstance(value, Path) else _env_text(value)
        values[variable] = shlex.quote(text)
    assignments = " ".join(f"{variable}={value}" for variable, value in values.items())
    dagster = Path(sys.executable).parent / "dagster"
    return f"cd {shlex.quote(str(root))} && {assignments} {dagster} dev -w workspace.yaml"


def _env_text(value: object) -> str:
    """A setting as its variable spells it: JSON for lists and dicts, true/false for booleans."""
    if isinstance(value, list | dict):
        return json.dumps(value)
    return str(value).lower() if isinstance(value, bool) else str(value)


def _materializations(result) -> dict[str, dict[str, object]]:
    """{asset: metadata} of what a run materialized (the last event per asset)."""
    metadata = {}
    for event in result.get_asset_materialization_events():
        materialization = event.step_materialization_data.materialization
        metadata[materialization.asset_key.to_user_string()] = {
            key: value.value for key, value in materialization.metadata.items()
        }
    return metadata


def _report(result, asset_name: str) -> dict[str, object]:
    return _materializations(result).get(asset_name, {})


def promote(
    settings: Settings, model: str = "", chunk_max_tokens: int = 0, chunk_overlap_tokens: int = -1, instance=None
) -> dict[str, object]:
    """Build a candidate (when a model or chunking is given), evaluate it next to the served build, and
    move the alias only if it passes the gate."""
    instance = instance or _instance(settings)
    if model or chunk_max_tokens or chunk_overlap_tokens >= 0:
        config = {"model": model, "chunk_max_tokens": chunk_max_tokens, "chunk_overlap_tokens": chunk_overlap_tokens}
        built = _materialize(settings, "candidate_job", {"ops": {"candidate_index": {"config": config}}}, instance)
        if not built.success:
            return {"promoted": False, "gate": "the candidate build failed (see its run in the Dagster UI)"}
    result = _materialize(settings, "promote_job", instance=instance)
    report = _report(result, "retrieval_eval_report")
    promoted = _report(result, "promoted_index")
    return {
        "promoted": bool(promoted.get("alias_moved")),
        "evaluated": report.get("evaluated_collection"),
        "ndcg_at_10": report.get("ndcg_at_10"),
        "baseline_ndcg_at_10": report.get("baseline_ndcg_at_10"),
        "gate_rule": report.get("gate_rule"),
        "gate": report.get("gate_reason", "the evaluation failed (see its run in the Dagster UI)"),
        "served": promoted.get("served_collection") or report.get("served_collection"),
        "run_id": result.run_id,
    }


def rollback(settings: Settings) -> tuple[str, str]:
    from rag_assets.resources import build_resources
    from rag_core.promotion import rollback as rollback_alias

    with build_resources(settings)["milvus"].store() as store:
        return rollback_alias(store)


def builds(settings: Settings) -> list[dict[str, str]]:
    from rag_assets.resources import build_resources
    from rag_core.promotion import builds as list_builds

    with build_resources(settings)["milvus"].store() as store:
        return list_builds(store)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rag", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("index", help="index the documents folder (one batched Dagster run)")
    build.add_argument("--documents-dir", type=Path, help="overrides RAG_DOCUMENTS_DIR")
    commands.add_parser("status", help="each source partition (indexed, pending, quarantined) and the served build")
    keys_cmd = commands.add_parser("partitions", help="the `documents` partition keys, in Dagster's order")
    keys_cmd.add_argument(
        "--range", action="store_true", help="print FIRST...LAST, for `dagster asset materialize --partition-range`"
    )
    commands.add_parser("reconcile", help="repair drift between the folder, Dagster and Milvus now")
    commands.add_parser("eval", help="evaluate the served index now (retrieval metrics, gate check, ragas)")
    promote_cmd = commands.add_parser(
        "promote", help="evaluate a candidate build next to the served one; move the alias only if it passes"
    )
    promote_cmd.add_argument("--model", default="", help="build a candidate with this model (models:/…, a dir)")
    promote_cmd.add_argument("--chunk-max-tokens", type=int, default=0, help="build a candidate with this chunk size")
    promote_cmd.add_argument("--chunk-overlap-tokens", type=int, default=-1)
    finetune_cmd = commands.add_parser(
        "finetune", help="fine-tune, register in MLflow, build, evaluate, promote; then train and gate the reranker"
    )
    finetune_cmd.add_argument("--epochs", type=int, default=0)
    finetune_cmd.add_argument("--max-train-queries", type=int, default=0)
    finetune_cmd.add_argument(
        "--no-reranker", action="store_true", help="skip the reranker (`rag train-reranker` trains and gates it later)"
    )
    rerank_cmd = commands.add_parser("train-reranker", help="train the cross-encoder reranker, register it in MLflow")
    rerank_cmd.add_argument("--epochs", type=int, default=0)
    rerank_cmd.add_argument("--max-train-queries", type=int, default=0)
    rerank_cmd.add_argument(
        "--judge",
        default="",
        metavar="MODEL",
        help="train nothing: judge a reranker trained before (models:/rag-reranker/N) on the served build",
    )
    commands.add_parser("rollback", help="serve the previously promoted build again")
    commands.add_parser("builds", help="list the index builds and which one is served")
    metrics_cmd = commands.add_parser("metrics", help="serve index freshness/size and run-failure metrics")
    metrics_cmd.add_argument("--port", type=int, default=9108)
    metrics_cmd.add_argument("--host", default="127.0.0.1", help="0.0.0.0 in a container, so Prometheus reaches it")
    experiment_cli.add_parser(commands)
    tenant_cli.add_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    settings = settings_or_exit()
    if getattr(args, "documents_dir", None):
        settings = settings.model_copy(update={"documents_dir": args.documents_dir})
    # Our own warnings (a Milvus wait's countdown, …) as plain lines; Dagster's events go to the run's log.
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    try:
        return _command(args, settings)
    except Refusal as refusal:
        print(f"rag {args.command}: {refusal}", file=sys.stderr)
        return 1


def _command(args: argparse.Namespace, settings: Settings) -> int:
    if args.command == "experiment":
        return experiment_cli.run(args, settings)
    if args.command == "tenant":
        return tenant_cli.run(args, settings)
    if args.command == "index":
        summary = index(settings)
        print(
            f"\nIndexed {summary['documents']} documents from {summary['partitions']} source partitions "
            f"into {summary['chunks']} chunks; {summary['embedded']} embedded now, "
            f"{summary['vectors']} vectors in Milvus; {summary['quarantined']} quarantined; "
            f"{summary['seconds']} s."
        )
        print(f"Open the Dagster UI (then http://127.0.0.1:3000):\n  {dagster_ui_command(settings)}")
    elif args.command == "status":
        _print_status(status(settings))
    elif args.command == "partitions":
        return _print_partitions(settings, args.range)
    elif args.command == "reconcile":
        return 0 if _materialize(settings, "reconcile_job").success else 1
    elif args.command == "eval":
        result = _materialize(settings, "evaluation_job")
        report = _report(result, "retrieval_eval_report")
        print(_terminal_text(report.get("report", "the evaluation failed — see the run in the Dagster UI")))
        if report.get("report_path"):
            print(f"report with its plots: {report['report_path']}")
        print(f"quality gate: {report.get('gate_reason')}")
        return 0 if result.success else 1
    elif args.command == "promote":
        outcome = promote(settings, args.model, args.chunk_max_tokens, args.chunk_overlap_tokens)
        for key, value in outcome.items():
            print(f"{key:>20}: {value}")
        return 0 if outcome["promoted"] else 1
    elif args.command == "finetune":
        config = {"epochs": args.epochs, "max_train_queries": args.max_train_queries}
        result = _materialize(
            settings, "finetune_and_promote_job", {"ops": {"finetuned_embedding_model": {"config": config}}}
        )
        model = _report(result, "finetuned_embedding_model")
        report = _report(result, "retrieval_eval_report")
        print(f"model: {model.get('model_uri')} (MLflow run {model.get('mlflow_run')})")
        print(f"quality gate: {report.get('gate_reason')}")
        print(f"promoted: {bool(_report(result, 'promoted_index').get('alias_moved'))}")
        if not result.success or args.no_reranker:
            return 0 if result.success else 1
        print("training the reranker and judging it on the served build (`--no-reranker` skips this)")
        return _train_reranker(settings, {"max_train_queries": args.max_train_queries})
    elif args.command == "train-reranker":
        if args.judge:
            return _train_reranker(settings, {"judge": args.judge})
        return _train_reranker(settings, {"epochs": args.epochs, "max_train_queries": args.max_train_queries})
    elif args.command == "rollback":
        moved_from, moved_to = rollback(settings)
        print(f"alias {settings.collection_alias}: {moved_from} → {moved_to}")
    elif args.command == "metrics":
        from rag_assets.operations import serve_metrics

        instance = _instance(settings)
        uri, alias = settings.resolved_milvus_uri, settings.collection_alias
        serve_metrics(instance, uri, settings.milvus_token, alias, args.host, args.port)
    elif args.command == "builds":
        for row in builds(settings):
            print("  ".join(f"{key}={value}" for key, value in row.items()))
    return 0


def _train_reranker(settings: Settings, config: dict[str, int | str]) -> int:
    """`reranker_job`, then what it trained (unless it only judged) and what the reranker gate decided."""
    result = _materialize(settings, "reranker_job", {"ops": {"reranker_model": {"config": config}}})
    model = _report(result, "reranker_model")
    print(f"reranker: {model.get('model_uri')} (MLflow run {model.get('mlflow_run')})")
    if not model.get("judged_only"):
        dev, bm25 = model.get("final_dev_ndcg_at_10"), model.get("final_dev_first_stage_ndcg_at_10")
        print(f"dev nDCG@10 reranking BM25's candidates: {dev} (BM25's own order: {bm25})")
    print(f"reranker gate: {model.get('rerank_gate', 'the run failed — see it in the Dagster UI')}")
    print(f"next: {model.get('next')}")
    return 0 if result.success else 1


def _terminal_text(markdown: str) -> str:
    """The report without its inline images (a data URI is kilobytes of base64 on a terminal)."""
    return "\n".join("" if "](data:image/" in line else line for line in markdown.splitlines())


def _print_partitions(settings: Settings, as_range: bool) -> int:
    from rag_assets.partitions import documents_partitions

    keys = _instance(settings).get_dynamic_partitions(documents_partitions.name)
    if not keys:
        raise Refusal("no `documents` partitions yet — `rag index` (or the sensor) adds one per source file")
    print(f"{keys[0]}...{keys[-1]}" if as_range else "\n".join(keys))
    return 0


def _print_status(report: dict[str, object]) -> None:
    sources = report.pop("sources")
    for key, value in report.items():
        print(f"{key:>18}: {value}")
    print(f"\n{'partition key':<44} {'documents':>9} {'chunks':>7}  status  (source)")
    for row in sources:
        counts = f"{row['documents']:>9} {row['chunks']:>7}"
        print(f"{row['partition_key']:<44} {counts}  {row['status']}  ({row['source']})")


if __name__ == "__main__":
    sys.exit(main())
