"""The experiment grid: models × chunk sizes × retrieval modes, one MLflow run each, so MLflow's compare
view lines them up. Each (model, chunking) is built once into a scratch collection outside the alias'
builds, evaluated in every mode, then dropped; nothing served is touched."""


import itertools
import time

from dagster import Config, OpExecutionContext, op
from pydantic import Field

from rag_assets.reporting import metric_names
from rag_assets.resources import EmbedderResource, EvaluationResource, MilvusResource, SourcesResource, TrackingResource
from rag_core.chunking import ChunkingConfig
from rag_core.embedding import Embedder
from rag_core.evaluation import RetrievalEvaluation, evaluate_collection
from rag_core.indexing import build_from_sources
from rag_core.models import BUNDLED_MODEL
from rag_core.promotion import fit_chunking, index_build
from rag_core.tracking import Tracker


class GridConfig(Config):
    models: list[str] = Field([BUNDLED_MODEL], description="Model references (bundled:…, models:/…, directories).")
    modes: list[str] = Field(["bm25", "dense", "hybrid"])
    chunk_sizes: list[list[int]] = Field([[256, 32]], description="[max tokens, overlap tokens] pairs.")
    max_queries: int = Field(0, ge=0, description="0 = every judged query.")
    keep_collections: bool = False


def _log_runs(
    tracker: Tracker,
    evaluated: RetrievalEvaluation,
    model: Embedder,
    chunking: ChunkingConfig,
    chunks: int,
    fusion: str,
    build_seconds: float,
) -> list[dict]:
    """One MLflow run per mode of a grid point (experiment `retrieval-grid`); returns a row per run."""
    rows = []
    for mode, scores in evaluated.modes.items():
        with tracker.run("retrieval-grid", f"{model.version}:{chunking.describe()}:{mode}") as run:
            mlflow = tracker.mlflow()
            mlflow.log_params(
                {
                    "model": model.version,
                    "model_uri": model.reference,
                    "chunking": chunking.describe(),
                    "chunk_max_tokens": chunking.max_tokens,
                    "chunk_overlap_tokens": chunking.overlap_tokens,
                    "mode": mode,
                    "fusion": fusion,
                    "dataset": evaluated.dataset,
                    "queries": evaluated.queries,
                    "chunks": chunks,
                }
            )
            mlflow.log_metrics(metric_names(scores.means))
            mlflow.log_metric("build_seconds", build_seconds)
        row = {"model": model.version, "chunking": chunking.describe(), "mode": mode, "run_id": run.info.run_id}
        rows.append(row | scores.means)
    return rows


@op(tags={"rag/experiment": "grid"})
def experiment_grid(
    context: OpExecutionContext,
    config: GridConfig,
    sources: SourcesResource,
    embedder: EmbedderResource,
    milvus: MilvusResource,
    evaluation: EvaluationResource,
    tracking: TrackingResource,
) -> list[dict]:
    bad = [pair for pair in config.chunk_sizes if len(pair) != 2 or pair[1] >= pair[0] or pair[1] < 0]
    if bad:
        raise ValueError(f"chunk_sizes must be [max, overlap] pairs with 0 ≤ overlap < max; got {bad}")
    tracker = tracking.tracker()
    dataset = evaluation.dataset()
    units = sources.discover()
    results = []
    combos = list(itertools.product(config.models, config.chunk_sizes))
    for number, (model_ref, (max_tokens, overlap)) in enumerate(combos, 1):
        started = time.perf_counter()
        model = embedder.load(model_ref)
        chunking = fit_chunking(ChunkingConfig(max_tokens, overlap), model)
        build = index_build(model, chunking)
        with milvus.store() as store:
            scratch = f"{store.alias}_grid_{build.collection_name}"[:250]
            collection, stats = build_from_sources(
                store, build, units, model, embedder.cache(), chunking, sources.limits(), sources.redact_pii, scratch
            )
            searcher, fusion = milvus.searcher(store, collection), evaluation.fusion()
            evaluated = evaluate_collection(
                searcher, collection, model, dataset, config.modes, fusion, evaluation.tenant, config.max_queries
            )
            if not config.keep_collections:
                store.drop_collection(collection)
        build_seconds = time.perf_counter() - started
        results += _log_runs(tracker, evaluated, model, chunking, stats.chunks, str(fusion), build_seconds)
        context.log.info(f"[{number}/{len(combos)}] {model.version} {chunking.describe()}: {evaluated.table()}")
    return results
