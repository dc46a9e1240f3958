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

from rag_core.settings import Settings, settings_or_exit

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

    from rag_assets.assets.indexing import build_tags
    from rag_assets.definitions import build_definitions
    from rag_assets.partitions import documents_partitions
    from rag_assets.resources import build_resources

    started = time.perf_counter()
    instance = instance or _instance(settings)
    definitions = build_definitions(settings)
    resources = build_resources(settings)
    keys = [unit.partition_key for unit in resources["sources"].discover()]
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
    range_tags = {ASSET_PARTITION_RANGE_START_TAG: ordered[0], ASSET_PARTITION_RANGE_END_TAG: ordered[-1]}
    result = definitions.resolve_job_def("index_documents_job").execute_in_process(
        instance=instance,
        run_config={"loggers": {"console": {"config": {"log_level": "INFO"}}}},
        tags={**range_tags, **build_tags(resources["embedder"].decide_build())},  # the build, decided once
    )
    metadata = _materializations(result)
    # The in-memory engine's snapshot of what was just written: every API worker loads it in seconds.
    definitions.resolve_job_def("search_index_job").execute_in_process(instance=instance)
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
        record = store.record(served) if served else None
    return {
        "documents_dir": str(settings.documents_dir.resolve()),
        "partitions": dict(Counter(entry.status for entry in entries.values())),
        "quarantined": [item for entry in entries.values() for item in entry.quarantined],
        "alias": settings.collection_alias,
        "served_collection": served,
        "rows": rows,
        "embedding_version": record.embedding_version if record else None,
    }


def _materialize(settings: Settings, job_name: str, run_config: dict | None = None, instance=None):
    """Runs a job of the code location in this process, recorded in the Dagster instance (and the UI)."""
    from rag_assets.definitions import build_definitions

    instance = instance or _instance(settings)
    return (
        build_definitions(settings)
        .resolve_job_def(job_name)
        .execute_in_process(run_config=run_config or {}, instance=instance, raise_on_error=False)
    )


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rag", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("index", help="index the documents folder (one batched Dagster run)")
    build.add_argument("--documents-dir", type=Path, help="overrides RAG_DOCUMENTS_DIR")
    commands.add_parser("status", help="what is indexed, quarantined and served")
    commands.add_parser("reconcile", help="repair drift between the folder, Dagster and Milvus now")
    commands.add_parser("eval", help="evaluate the served index now (retrieval metrics, gate check, ragas)")
    promote_cmd = commands.add_parser(
        "promote", help="evaluate a candidate build next to the served one; move the alias only if it passes"
    )
    promote_cmd.add_argument("--model", default="", help="build a candidate with this model (models:/…, a dir)")
    promote_cmd.add_argument("--chunk-max-tokens", type=int, default=0, help="build a candidate with this chunk size")
    promote_cmd.add_argument("--chunk-overlap-tokens", type=int, default=-1)
    finetune_cmd = commands.add_parser("finetune", help="fine-tune, register in MLflow, build, evaluate, promote")
    finetune_cmd.add_argument("--epochs", type=int, default=0)
    finetune_cmd.add_argument("--max-train-queries", type=int, default=0)
    rerank_cmd = commands.add_parser("train-reranker", help="train the cross-encoder reranker, register it in MLflow")
    rerank_cmd.add_argument("--epochs", type=int, default=0)
    rerank_cmd.add_argument("--max-train-queries", type=int, default=0)
    commands.add_parser("rollback", help="serve the previously promoted build again")
    commands.add_parser("builds", help="list the index builds and which one is served")
    metrics_cmd = commands.add_parser("metrics", help="serve index freshness/size and run-failure metrics")
    metrics_cmd.add_argument("--port", type=int, default=9108)
    metrics_cmd.add_argument("--host", default="127.0.0.1", help="0.0.0.0 in a container, so Prometheus reaches it")
    args = parser.parse_args(argv)

    settings = settings_or_exit()
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
    elif args.command == "eval":
        result = _materialize(settings, "evaluation_job")
        report = _report(result, "retrieval_eval_report")
        print(report.get("report", "the evaluation failed — see the run in the Dagster UI"))
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
        return 0 if result.success else 1
    elif args.command == "train-reranker":
        config = {"epochs": args.epochs, "max_train_queries": args.max_train_queries}
        result = _materialize(settings, "reranker_job", {"ops": {"reranker_model": {"config": config}}})
        model = _report(result, "reranker_model")
        print(f"model: {model.get('model_uri')} (MLflow run {model.get('mlflow_run')})")
        dev, bm25 = model.get("final_dev_ndcg_at_10"), model.get("final_dev_first_stage_ndcg_at_10")
        print(f"dev nDCG@10 reranking BM25's candidates: {dev} (BM25's own order: {bm25})")
        print(f"serve it: RAG_RERANK_MODEL={model.get('model_uri')} (measure first: evals/bench_rerank.py)")
        return 0 if result.success else 1
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


if __name__ == "__main__":
    sys.exit(main())
