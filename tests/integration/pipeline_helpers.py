"""Driving the real code location in-process: the CLI build, sensor ticks and the runs they request."""

from __future__ import annotations

import csv
import gzip
import json
import subprocess
import sys
from pathlib import Path

from dagster import (
    AddDynamicPartitionsRequest,
    DagsterInstance,
    DeleteDynamicPartitionsRequest,
    SensorResult,
    SkipReason,
    build_sensor_context,
)

from rag_assets.definitions import build_definitions
from rag_assets.resources import build_resources
from rag_core.chunking import DOCUMENT_POSITION
from rag_core.evaluation import EvalDataset, restrict_to_documents
from rag_core.models import BUNDLED_MODEL
from rag_core.promotion import served_spec
from rag_core.search.filters import SearchFilter
from rag_core.settings import Settings, vendored_eval_dataset
from rag_core.store import Hit
from tests.conftest import FIXTURES


def sensor_tick(settings: Settings, instance: DagsterInstance) -> SensorResult | SkipReason:
    definitions = build_definitions(settings)
    sensor = definitions.resolve_sensor_def("documents_sensor")
    with build_sensor_context(
        instance=instance, resources=build_resources(settings), definitions=definitions
    ) as context:
        return sensor(context)


def apply_sensor_result(settings: Settings, instance: DagsterInstance, result: SensorResult) -> list[str]:
    """What the daemon does with a tick: partition requests first, then the runs. Returns run ids."""
    for request in result.dynamic_partitions_requests or []:
        if isinstance(request, AddDynamicPartitionsRequest):
            instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
        elif isinstance(request, DeleteDynamicPartitionsRequest):
            for key in request.partition_keys:
                instance.delete_dynamic_partition(request.partitions_def_name, key)
    definitions = build_definitions(settings)
    run_ids = []
    for run_request in result.run_requests or []:
        if run_request.job_name == "remove_documents_job":
            outcome = definitions.resolve_job_def("remove_documents_job").execute_in_process(
                run_config=run_request.run_config, instance=instance
            )
        elif run_request.partition_key is not None:
            outcome = definitions.resolve_job_def("index_documents_job").execute_in_process(
                partition_key=run_request.partition_key, tags=run_request.tags, instance=instance
            )
        else:  # a batched run over a partition range, described by its tags
            outcome = definitions.resolve_job_def("index_documents_job").execute_in_process(
                tags=run_request.tags, instance=instance
            )
        assert outcome.success
        run_ids.append(outcome.run_id)
    return run_ids


def search(settings: Settings, query: str, limit: int = 5) -> list[Hit]:
    resources = build_resources(settings)
    with resources["milvus"].store() as store:
        spec = served_spec(store, BUNDLED_MODEL)
        vector = resources["embedder"].load(spec.model, spec.backend).encode([query])[0]
        return store.search_dense(store.alias, vector, limit, SearchFilter(rows="chunks").expression())


def served_rows(settings: Settings, entries: bool = False) -> dict[str, set[str]]:
    """Chunk ids per source partition in the collection the alias serves; with `entries`, the ids of the
    document entries beside them too (rag_core.chunking: `…#-1:…`)."""
    with build_resources(settings)["milvus"].store() as store:
        collection = store.alias_target()
        keys = list(store.rows_by_source(collection))
        rows = store.chunk_ids_by_source(collection, keys)
    return {key: {i for i in ids if entries or f"#{DOCUMENT_POSITION}:" not in i} for key, ids in rows.items()}


def write_fixture_dataset(folder: Path) -> Path:
    """SciFact's queries and qrels for the fixture corpus' abstracts, in BEIR layout (train and test)."""
    records = [json.loads(line) for line in (FIXTURES / "corpus" / "abstracts.jsonl").read_text().splitlines()]
    ids = {record["_id"] for record in records}
    (folder / "qrels").mkdir(parents=True)
    with gzip.open(folder / "corpus.jsonl.gz", "wt") as handle:
        handle.writelines(json.dumps(record) + "\n" for record in records)
    queries = {}
    for split in ("train", "test"):
        dataset = restrict_to_documents(EvalDataset.load(vendored_eval_dataset(), split), ids)
        queries.update(dataset.queries)
        with (folder / "qrels" / f"{split}.tsv").open("w", newline="") as handle:
            writer = csv.writer(handle, delimiter="\t")
            writer.writerow(["query-id", "corpus-id", "score"])
            writer.writerows([q, d, s] for q, judged in dataset.qrels.items() for d, s in judged.items())
    (folder / "queries.jsonl").write_text("".join(json.dumps({"_id": q, "text": t}) + "\n" for q, t in queries.items()))
    return folder


def measured(sides: object, settings: Settings | None = None) -> str:
    """The gate's `gate_measured` / `promotion_gate_measured` metadata in one short line per build, so that a
    failing assertion shows it whole: which query model, how many queries and rows each score came from.
    With `settings`, each build is also scored again (`rescored`)."""
    line = " | ".join(
        f"{role}: nDCG@10 {side.get('ndcg_at_10', '?')} with {side.get('query_model')} on {side.get('queries')} "
        f"queries, {side.get('rows', '?')} rows of {str(side.get('collection'))[-40:]}"
        for role, side in dict(sides or {}).items()  # type: ignore[call-overload]
    )
    return f"{line} || {rescored(settings, sides)}" if settings is not None else line


def rescored(settings: Settings, sides: object) -> str:
    """Each build a gate measured, scored again four ways, to tell a wrong index from wrong state in this
    process: as the gate does (the process' cached engine and embedder), with the model loaded afresh, with the
    model and the in-memory engine both afresh (the search log read again), and in a new Python process."""
    names = {role: side.get("collection") for role, side in dict(sides or {}).items()}  # type: ignore[call-overload]
    names = {role: name for role, name in names.items() if name}
    here = _scores_again(settings, names)
    process = subprocess.run(
        [sys.executable, "-m", "tests.integration.pipeline_helpers", settings.model_dump_json(), json.dumps(names)],
        cwd=Path(__file__).parents[2], capture_output=True, text=True, timeout=600,
    )
    there = json.loads(process.stdout.strip().splitlines()[-1]) if process.returncode == 0 else {}
    scored = [
        f"{role} {' / '.join(f'{score:.4f}' for score in [*here[role], *there.get(role, [])])}" for role in here
    ]
    failed = f" (the new process failed: {process.stderr.strip()[-300:]})" if process.returncode else ""
    return (
        f"{settings.eval_gate_mode} nDCG@10 again (as the gate / model afresh / model and engine afresh / in a new "
        f"process): {' | '.join(scored)}{failed}"
    )


def _scores_again(settings: Settings, names: dict[str, str]) -> dict[str, list[float]]:
    from rag_core.build_record import BuildRecord
    from rag_core.embedding import Embedder
    from rag_core.evaluation import evaluate_collection
    from rag_core.search.engines import MemoryEngine
    from rag_core.search.log import SearchLog

    resources = build_resources(settings)
    milvus, embedder, evaluation = resources["milvus"], resources["embedder"], resources["evaluation"]
    dataset, mode, connection = evaluation.dataset(), evaluation.gate_mode, milvus.connection()
    scores = {}
    with milvus.searchable(lambda _: names) as builds:
        for role, build in builds.items():
            cached = embedder.load_build(build.properties)
            fresh = Embedder(
                cached.model_dir, name=cached.weights_version.rpartition("@")[0], backend=cached.backend,
                onnx_dir=cached.onnx_dir,
            )
            ways = [(build.searcher, cached), (build.searcher, fresh)]
            if connection.engine == "memory":
                engine = MemoryEngine(SearchLog(connection.search_dir), connection.alias, connection.store, False)
                ways.append((engine.searcher(build.collection), fresh))
            fusion = evaluation.served_fusion(BuildRecord.from_properties(build.properties))
            scores[role] = [
                evaluate_collection(searcher, build.collection, model, dataset, [mode], fusion, evaluation.tenant)
                .modes[mode].means["ndcg@10"]
                for searcher, model in ways
            ]
    return scores


if __name__ == "__main__":  # `rescored` in a new process: the settings as JSON, then {role: collection} as JSON
    found = _scores_again(Settings.model_validate_json(sys.argv[1]), json.loads(sys.argv[2]))
    print(json.dumps({role: scores[-1:] for role, scores in found.items()}))
