"""The fine-tuned embedding model (tracked and registered in MLflow) and the candidate index built with it.

`finetuned_embedding_model` learns from three sources of (question, passage) pairs: the train qrels of the
configured dataset, answers users marked relevant (the serving feedback table), and — when a generative
LLM is configured — synthetic questions written for chunks of the user's own index (rag_core.training_data
gathers them). `candidate_index` then builds a new collection (blue) next to the served one (green);
`retrieval_eval_report` and `promoted_index` decide whether the alias moves.
"""

import time
from dataclasses import asdict
from pathlib import Path

from dagster import AssetExecutionContext, Config, Failure, MaterializeResult, MetadataValue, asset
from pydantic import Field

from rag_assets.assets.indexing import INDEX_WRITER_TAG
from rag_assets.reporting import DagsterOrigin, latest_metadata, metric_names, mlflow_links
from rag_assets.resources import (
    EmbedderResource,
    EvaluationResource,
    MilvusResource,
    SourcesResource,
    TrackingResource,
)
from rag_core.chunking import ChunkingConfig
from rag_core.embedding import Embedder
from rag_core.finetune import EpochCallback, FinetuneConfig, FinetuneResult, finetune, mine_hard_negatives
from rag_core.indexing import BuildStats, build_from_sources
from rag_core.models import BUNDLED_MODEL
from rag_core.promotion import CANDIDATE, candidate_build, fit_chunking, index_build, served_spec
from rag_core.tracking import Tracker
from rag_core.training_data import TrainingSet, add_served_examples, qrels_training_set


class FinetuneRunConfig(Config):
    base_model: str = Field(BUNDLED_MODEL, description="Model reference to start from.")
    epochs: int = Field(0, ge=0, description="0 = the tuned default.")
    batch_size: int = Field(0, ge=0, description="0 = the tuned default.")
    max_train_queries: int = Field(0, ge=0, description="0 = every train query (CI uses a slice).")
    dev_fraction: float = Field(0.1, ge=0, lt=0.5, description="Train queries held out for per-epoch metrics.")
    dev_corpus_size: int = Field(500, ge=10, description="Documents the dev queries are ranked against.")
    use_feedback: bool = True
    synthetic_questions: int = Field(0, ge=0, description="Chunks to write questions for (needs a generative LLM).")
    hard_negatives: bool = True
    mining: str = Field("hybrid", description="How hard negatives are mined: bm25, dense or hybrid (both fused).")
    preset: str = Field("default", description="`default` (the tuned configuration) or `small` (seconds, for CI).")
    register_model: bool = True


def _training_params(
    config: FinetuneRunConfig, train_config: FinetuneConfig, training: TrainingSet, dataset: str
) -> dict[str, object]:
    return {
        "base_model": config.base_model,
        **{f"train.{key}": value for key, value in train_config.__dict__.items()},
        **{f"examples.{origin}": count for origin, count in training.origins.items()},
        "hard_negatives": config.hard_negatives,
        "dataset": dataset,
        "dev_queries": len(training.dev[0]) if training.dev else 0,
        "held_out_pairs": len(training.held_out),
    }


def _epoch_logger(context: AssetExecutionContext, mlflow) -> EpochCallback:
    def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
        mlflow.log_metrics(metric_names(metrics), step=epoch)
        context.log.info(f"epoch {epoch}: {metrics}")

    return on_epoch


def _log_model(tracker: Tracker, run_id: str, result: FinetuneResult, register: bool) -> tuple[str, str]:
    """The trained model as the run's artifact; returns its URI (a registered version, aliased `candidate` until
    its gate decides, or its directory) and what the registry did."""
    mlflow = tracker.mlflow()
    mlflow.log_metric("train_seconds", result.seconds)
    mlflow.log_artifacts(str(result.model_dir), artifact_path="model")
    if not register:
        model_uri = str(result.model_dir)
        mlflow.set_tag("model_uri", model_uri)
        return model_uri, "not registered (register_model: false)"
    model_uri = tracker.register_model(run_id, "model")
    mlflow.set_tag("model_uri", model_uri)
    return model_uri, tracker.mark_candidate(model_uri)


def _model_metadata(result: FinetuneResult, model_uri: str, run_id: str, training: TrainingSet) -> dict[str, object]:
    # the dev metrics of the epoch kept (or, with a refit, the epoch count it reproduced on every pair)
    dev_run = [metrics for metrics in result.history if not metrics.get("refit")]
    final = next((m for m in reversed(dev_run) if m.get("saved")), dev_run[-1] if dev_run else {})
    return {
        "model_uri": model_uri,
        "model_dir": MetadataValue.path(str(result.model_dir)),
        "mlflow_run": run_id,
        "examples": MetadataValue.json(training.origins),
        "train_examples": result.examples,
        "refit_epochs": result.refit_epochs,
        "train_seconds": round(result.seconds, 1),
        "history": MetadataValue.json(result.history),
        **metric_names(final, "final_"),
        "notes": MetadataValue.md("\n".join(f"- {note}" for note in training.notes) or "none"),
    }


@asset(group_name="models", kinds={"pytorch", "mlflow"})
def finetuned_embedding_model(
    context: AssetExecutionContext,
    config: FinetuneRunConfig,
    embedder: EmbedderResource,
    evaluation: EvaluationResource,
    tracking: TrackingResource,
    milvus: MilvusResource,
) -> MaterializeResult:
    """MiniLM fine-tuned with MultipleNegativesRankingLoss and mined hard negatives. One MLflow run per
    training (experiment `embeddings`): params, per-epoch dev metrics, the model as an artifact, and a
    new version of the registered model `rag-embedder`."""
    started = time.perf_counter()
    dataset_dir = Path(evaluation.dataset_dir)
    training = qrels_training_set(
        dataset_dir, evaluation.train_split, config.max_train_queries, config.dev_fraction, config.dev_corpus_size
    )
    with milvus.store() as store:
        feedback_db = evaluation.serving_db_url if config.use_feedback else ""
        add_served_examples(training, store, feedback_db, config.synthetic_questions, evaluation.llm())
    base_dir = embedder.resolver().model_dir(config.base_model)
    if config.hard_negatives:  # one pass over the held-out pairs too: the refit trains on them
        everything = mine_hard_negatives(
            [*training.examples, *training.held_out],
            training.corpus,
            embedder_dir=base_dir,
            method=config.mining,
            cache=embedder.cache(),
        )
        count = len(training.examples)
        training.examples, training.held_out = everything[:count], everything[count:]
    train_config = FinetuneConfig.preset(config.preset, config.epochs, config.batch_size)
    output_dir = Path(embedder.models_dir) / f"finetuned-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}"
    params = _training_params(config, train_config, training, f"{dataset_dir.name}/{evaluation.train_split}")
    tracker = tracking.tracker()
    tags = {"base_model": config.base_model, **DagsterOrigin.of(context, tracking.dagster_ui_url).tags()}
    with tracker.run("embeddings", f"{output_dir.name}:{config.base_model}", tags) as run:
        mlflow = tracker.mlflow()
        mlflow.log_params(params)
        on_epoch = _epoch_logger(context, mlflow)
        result = finetune(
            base_dir, training.examples, output_dir, train_config, training.dev, on_epoch, training.held_out
        )
        model_uri, registry = _log_model(tracker, run.info.run_id, result, config.register_model)
    for note in training.notes:
        context.log.warning(note)
    metadata = {**_model_metadata(result, model_uri, run.info.run_id, training), "registry": registry}
    link = mlflow_links(tracker, {"mlflow_run_url": (run.info.experiment_id, run.info.run_id)})
    return MaterializeResult(metadata={**metadata, **link, "seconds": round(time.perf_counter() - started, 1)})


class CandidateConfig(Config):
    model: str = Field("", description="Model reference; empty = the latest finetuned_embedding_model.")
    chunk_max_tokens: int = Field(0, ge=0, description="0 = the served build's chunk size.")
    chunk_overlap_tokens: int = Field(-1, ge=-1, description="-1 = the served build's overlap.")


def _build_metadata(stats: BuildStats) -> dict[str, int]:
    """Every count of a one-pass build, `cached` named `from_cache` as chunk_embeddings names it."""
    return {("from_cache" if name == "cached" else name): count for name, count in asdict(stats).items()}


def _candidate_model(
    requested: str, config: CandidateConfig, embedder: EmbedderResource, milvus: MilvusResource
) -> tuple[str, Embedder, ChunkingConfig]:
    """The candidate's model reference, its model loaded, and its chunking: what the run asks for (an empty
    `requested` model: none), the rest as the served build has it."""
    with milvus.store() as store:
        served = served_spec(store, BUNDLED_MODEL)
    try:
        follows = embedder.follow_served_chunking
        model_ref, chunking = candidate_build(
            served,
            BUNDLED_MODEL,
            requested,
            config.chunk_max_tokens,
            config.chunk_overlap_tokens,
            None if follows else embedder.document_entries,
            "" if follows else embedder.bm25_analyzer,
        )
    except ValueError as refused:
        raise Failure(str(refused)) from refused
    model = embedder.load(model_ref)
    return model_ref, model, fit_chunking(chunking, model)


@asset(group_name="models", deps=[finetuned_embedding_model], kinds={"milvus"}, op_tags=INDEX_WRITER_TAG)
def candidate_index(
    context: AssetExecutionContext,
    config: CandidateConfig,
    sources: SourcesResource,
    embedder: EmbedderResource,
    milvus: MilvusResource,
) -> MaterializeResult:
    """A complete new collection (blue) from the source folder with the candidate model and/or chunking,
    built next to the served one (green), which keeps serving. The alias does not move here."""
    started = time.perf_counter()
    requested = config.model or str(latest_metadata(context.instance, "finetuned_embedding_model").get("model_uri", ""))
    model_ref, model, chunking = _candidate_model(requested, config, embedder, milvus)
    build = index_build(model, chunking)
    with milvus.store() as store:
        served_collection = store.alias_target()
        if served_collection == store.collection_for(build):
            raise Failure(
                f"the candidate ({model.version}, {chunking.describe()}) is the served build {served_collection} — "
                "choose another model or chunking"
            )
        collection, stats = build_from_sources(
            store, build, sources.discover(), model, embedder.cache(), chunking, sources.limits(), sources.redact_pii
        )
        store.update_record(collection, status=CANDIDATE, expected_rows=stats.chunks)
    context.log.info(f"candidate {collection}: {stats.rows} rows; served {served_collection} is untouched")
    return MaterializeResult(
        metadata={
            "collection": collection,
            "served_collection": served_collection or "none",
            "embedding_model": model.version,
            "model_uri": model_ref,
            "chunking": chunking.describe(),
            **_build_metadata(stats),
            "next": "materialize retrieval_eval_report + promoted_index (`rag promote`)",
            "seconds": round(time.perf_counter() - started, 1),
        }
    )


MODEL_ASSETS = [finetuned_embedding_model, candidate_index]
