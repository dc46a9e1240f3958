"""The fine-tuned embedding model (tracked and registered in MLflow) and the candidate index built with it.

`finetuned_embedding_model` learns from three sources of (question, passage) pairs: the train qrels of the
configured dataset, answers users marked relevant (the serving feedback table), and — when a generative
LLM is configured — synthetic questions written for chunks of the user's own index. `candidate_index`
then builds a new collection (blue) next to the served one (green); `retrieval_eval_report` and
`promoted_index` decide whether the alias moves.
"""


import random
import time
from dataclasses import replace
from pathlib import Path

from dagster import AssetExecutionContext, Config, Failure, MaterializeResult, MetadataValue, asset
from pydantic import Field

from rag_assets.assets.indexing import INDEX_WRITER_TAG
from rag_assets.reporting import latest_metadata, metric_name
from rag_assets.resources import (
    EmbedderResource,
    EvaluationResource,
    MilvusResource,
    SourcesResource,
    TrackingResource,
)
from rag_core.chunking import ChunkingConfig
from rag_core.finetune import (
    FinetuneConfig,
    TrainingExample,
    finetune,
    load_corpus,
    mine_hard_negatives,
    pairs_from_feedback,
    pairs_from_qrels,
)
from rag_core.indexing import build_from_sources
from rag_core.models import BUNDLED_MODEL
from rag_core.promotion import CANDIDATE, index_build, served_spec
from rag_core.querylog import ServingDatabase
from rag_core.synthetic_questions import synthetic_questions


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


def _dev_split(
    examples: list[TrainingExample], corpus: dict[str, str], config: FinetuneRunConfig
) -> tuple[list[TrainingExample], tuple[dict[str, str], dict[str, str], dict[str, dict[str, int]]] | None]:
    """Hold out whole queries (never pairs of a training query) for the per-epoch dev metrics."""
    queries = sorted({example.query_id for example in examples})
    count = int(len(queries) * config.dev_fraction) if len(queries) >= 10 else 0
    held = set(random.Random(7).sample(queries, count))
    if not held:
        return examples, None
    train = [example for example in examples if example.query_id not in held]
    dev = [example for example in examples if example.query_id in held]
    qrels: dict[str, dict[str, int]] = {}
    for example in dev:
        qrels.setdefault(example.query_id, {})[example.positive_id] = 1
    relevant = {doc for judged in qrels.values() for doc in judged}
    others = sorted(set(corpus) - relevant)
    sample = random.Random(11).sample(others, min(len(others), max(0, config.dev_corpus_size - len(relevant))))
    dev_corpus = {doc: corpus[doc] for doc in [*sorted(relevant), *sample]}
    dev_queries = {example.query_id: example.query for example in dev}
    return train, (dev_queries, dev_corpus, qrels)


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
    limit = config.max_train_queries or None
    examples = pairs_from_qrels(dataset_dir, evaluation.train_split, limit=limit)
    corpus = load_corpus(dataset_dir)
    examples, dev = _dev_split(examples, corpus, config)
    origins = {"qrels": len(examples), "feedback": 0, "synthetic": 0}
    notes: list[str] = []
    with milvus.store() as store:
        served = store.alias_target()
        if config.use_feedback and served:
            relevant = ServingDatabase(evaluation.serving_db_url).relevant_pairs()
            texts = store.texts_by_chunk_id(served, sorted({cid for _, ids in relevant for cid in ids[:1]}))
            feedback = pairs_from_feedback([(question, ids[:1]) for question, ids in relevant], texts)
            examples += feedback
            origins["feedback"] = len(feedback)
        if config.synthetic_questions and served:
            passages = store.sample_texts(served, config.synthetic_questions)
            questions = synthetic_questions(list(passages.values()), evaluation.llm())
            if questions is None:
                notes.append(f"synthetic questions skipped: {evaluation.llm_model} is not a generative model")
            else:
                synthetic = [
                    TrainingExample(question, passage, None, "synthetic", f"synthetic:{chunk}", chunk)
                    for (chunk, passage), question in zip(passages.items(), questions, strict=True)
                    if question
                ]
                examples += synthetic
                origins["synthetic"] = len(synthetic)
    base_dir = embedder.resolver().model_dir(config.base_model)
    if config.hard_negatives:
        examples = mine_hard_negatives(
            examples, corpus, embedder_dir=base_dir, method=config.mining, cache=embedder.cache()
        )
    train_config = FinetuneConfig.small() if config.preset == "small" else FinetuneConfig()
    if config.epochs:
        train_config = replace(train_config, epochs=config.epochs)
    if config.batch_size:
        train_config = replace(train_config, batch_size=config.batch_size)
    output_dir = Path(embedder.models_dir) / f"finetuned-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}"
    tracker = tracking.tracker()
    with tracker.run("embeddings", output_dir.name, {"base_model": config.base_model}) as run:
        mlflow = tracker.mlflow()
        mlflow.log_params(
            {
                "base_model": config.base_model,
                **{f"train.{key}": value for key, value in train_config.__dict__.items()},
                **{f"examples.{origin}": count for origin, count in origins.items()},
                "hard_negatives": config.hard_negatives,
                "dataset": f"{dataset_dir.name}/{evaluation.train_split}",
                "dev_queries": len(dev[0]) if dev else 0,
            }
        )

        def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
            mlflow.log_metrics({metric_name(key): value for key, value in metrics.items()}, step=epoch)
            context.log.info(f"epoch {epoch}: {metrics}")

        result = finetune(base_dir, examples, output_dir, train_config, dev=dev, on_epoch=on_epoch)
        mlflow.log_metric("train_seconds", result.seconds)
        mlflow.log_artifacts(str(result.model_dir), artifact_path="model")
        model_uri = tracker.register_model(run.info.run_id, "model") if config.register_model else str(result.model_dir)
        mlflow.set_tag("model_uri", model_uri)
    for note in notes:
        context.log.warning(note)
    final = result.history[-1] if result.history else {}
    return MaterializeResult(
        metadata={
            "model_uri": model_uri,
            "model_dir": MetadataValue.path(str(result.model_dir)),
            "mlflow_run": run.info.run_id,
            "examples": MetadataValue.json(origins),
            "train_examples": result.examples,
            "train_seconds": round(result.seconds, 1),
            "history": MetadataValue.json(result.history),
            **{f"final_{metric_name(key)}": value for key, value in final.items()},
            "notes": MetadataValue.md("\n".join(f"- {note}" for note in notes) or "none"),
            "seconds": round(time.perf_counter() - started, 1),
        }
    )


class CandidateConfig(Config):
    model: str = Field("", description="Model reference; empty = the latest finetuned_embedding_model.")
    chunk_max_tokens: int = Field(0, ge=0, description="0 = the served build's chunk size.")
    chunk_overlap_tokens: int = Field(-1, ge=-1, description="-1 = the served build's overlap.")


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
    model_ref = config.model or str(latest_metadata(context.instance, "finetuned_embedding_model").get("model_uri", ""))
    with milvus.store() as store:
        served = served_spec(store, BUNDLED_MODEL)
    model_ref = model_ref or (served.model if served else BUNDLED_MODEL)
    max_tokens = config.chunk_max_tokens or (served.chunk_max_tokens if served else 256)
    overlap = config.chunk_overlap_tokens if config.chunk_overlap_tokens >= 0 else (
        served.chunk_overlap_tokens if served else 32
    )
    if overlap >= max_tokens:
        raise Failure(f"chunk overlap {overlap} must be smaller than the chunk size {max_tokens}")
    model = embedder.load(model_ref)
    chunking = ChunkingConfig(max_tokens, overlap, model.max_seq_length - 2)
    build = index_build(model, chunking)
    with milvus.store() as store:
        served_collection = store.alias_target()
        if served_collection == store.collection_for(build):
            raise Failure(
                f"the candidate ({model.version}, {chunking.describe()}) is the served build {served_collection} — "
                "choose another model or chunking"
            )
        collection, stats = build_from_sources(
            store,
            build,
            sources.discover(),
            model,
            embedder.cache(),
            chunking,
            sources.limits(),
            sources.redact_pii,
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
            "documents": stats.documents,
            "quarantined": stats.quarantined,
            "chunks": stats.chunks,
            "computed": stats.computed,
            "from_cache": stats.cached,
            "rows": stats.rows,
            "next": "materialize retrieval_eval_report + promoted_index (`rag promote`)",
            "seconds": round(time.perf_counter() - started, 1),
        }
    )


MODEL_ASSETS = [finetuned_embedding_model, candidate_index]
