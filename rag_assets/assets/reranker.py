"""The reranker: a cross-encoder trained from the bundled MiniLM, tracked and registered in MLflow.

`reranker_model` learns from the train qrels of the configured dataset and from answers users marked
relevant, with hard negatives mined as for the embedder (rag_core.finetune). Serving uses it only when
`RAG_RERANK_MODEL` names it (`models:/rag-reranker/N`): whether it earns its latency is measured by
`evals/bench_rerank.py`, not assumed here.
"""


import time
from pathlib import Path

from dagster import AssetExecutionContext, Config, MaterializeResult, MetadataValue, asset
from pydantic import Field

from rag_assets.reporting import DagsterOrigin, metric_name, mlflow_links
from rag_assets.resources import EmbedderResource, EvaluationResource, MilvusResource, TrackingResource
from rag_core.finetune import TrainingExample, load_corpus, pairs_from_feedback, pairs_from_qrels
from rag_core.models import BUNDLED_MODEL
from rag_core.querylog import ServingDatabase
from rag_core.rerank import (
    RerankerConfig,
    is_cross_encoder,
    mine_reranker_negatives,
    rerank_dev_set,
    split_dev,
    train_reranker,
)
from rag_core.settings import bundled_model_dir
from rag_core.tracking import REGISTERED_RERANKER

EXPERIMENT = "rerankers"


class RerankerRunConfig(Config):
    base_model: str = Field(
        BUNDLED_MODEL,
        description="An encoder to put a fresh reranking head on (the bundled MiniLM, models:/rag-embedder/N), "
        "or a reranker (models:/rag-reranker/N) to train further.",
    )
    epochs: int = Field(0, ge=0, description="0 = the preset's.")
    max_train_queries: int = Field(0, ge=0, description="0 = every train query (CI uses a slice).")
    dev_fraction: float = Field(0.1, ge=0, lt=0.5, description="Train queries held out for per-epoch metrics.")
    preset: str = Field("default", pattern="^(default|small)$", description="`default` or `small` (seconds, CI).")
    use_feedback: bool = True
    mining: str = Field("hybrid", pattern="^(bm25|dense|hybrid)$", description="How hard negatives are mined.")
    register_model: bool = True


def qrels_examples(dataset_dir: Path, split: str, max_queries: int) -> list[TrainingExample]:
    """The split's judged pairs, of its first `max_queries` questions (0 = all) in file order."""
    examples = pairs_from_qrels(dataset_dir, split)
    if not max_queries:
        return examples
    keep = set(list(dict.fromkeys(example.query_id for example in examples))[:max_queries])
    return [example for example in examples if example.query_id in keep]


def feedback_examples(milvus: MilvusResource, serving_db_url: str) -> list[TrainingExample]:
    """(question, first chunk a user marked relevant) from the serving feedback, over the served build."""
    with milvus.store() as store:
        served = store.alias_target()
        if not served:
            return []
        relevant = ServingDatabase(serving_db_url).relevant_pairs()
        texts = store.texts_by_chunk_id(served, sorted({chunk for _, chunks in relevant for chunk in chunks[:1]}))
    return pairs_from_feedback([(question, chunks[:1]) for question, chunks in relevant], texts)


@asset(group_name="models", kinds={"pytorch", "mlflow"})
def reranker_model(
    context: AssetExecutionContext,
    config: RerankerRunConfig,
    embedder: EmbedderResource,
    evaluation: EvaluationResource,
    tracking: TrackingResource,
    milvus: MilvusResource,
) -> MaterializeResult:
    """A cross-encoder reranker trained with binary cross-entropy on (question, relevant passage) and
    (question, hard negative) pairs. One MLflow run per training (experiment `rerankers`): params,
    per-epoch dev metrics (reranking BM25's candidates for held-out train questions, next to BM25's own
    order), the model as an artifact, and a new version of the registered model `rag-reranker`."""
    started = time.perf_counter()
    dataset_dir = Path(evaluation.dataset_dir)
    corpus = load_corpus(dataset_dir)
    train_config = RerankerConfig.preset(config.preset, config.epochs)
    examples, dev_examples = split_dev(
        qrels_examples(dataset_dir, evaluation.train_split, config.max_train_queries), config.dev_fraction
    )
    origins = {"qrels": len(examples), "feedback": 0}
    if config.use_feedback:
        feedback = feedback_examples(milvus, evaluation.serving_db_url)
        examples += feedback
        origins["feedback"] = len(feedback)
    base_dir = embedder.resolver().model_dir(config.base_model)
    # A reranker cannot embed: negatives are then mined with the bundled encoder.
    mining_dir = bundled_model_dir() if is_cross_encoder(base_dir) else base_dir
    mined = mine_reranker_negatives(
        examples, corpus, mining_dir, train_config.hard_negatives, config.mining, embedder.cache()
    )
    dev = rerank_dev_set(dev_examples, corpus, train_config.dev_depth)
    output_dir = Path(embedder.models_dir) / f"reranker-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}"
    tracker = tracking.tracker()
    tags = {"base_model": config.base_model, **DagsterOrigin.of(context, tracking.dagster_ui_url).tags()}
    with tracker.run(EXPERIMENT, f"{output_dir.name}:{config.base_model}", tags) as run:
        mlflow = tracker.mlflow()
        mlflow.log_params(
            {
                "base_model": config.base_model,
                **{f"train.{key}": value for key, value in train_config.__dict__.items()},
                **{f"examples.{origin}": count for origin, count in origins.items()},
                "mining": config.mining,
                "dataset": f"{dataset_dir.name}/{evaluation.train_split}",
                "dev_queries": len(dev[0]) if dev else 0,
            }
        )

        def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
            mlflow.log_metrics({metric_name(key): value for key, value in metrics.items()}, step=epoch)
            context.log.info(f"epoch {epoch}: {metrics}")

        result = train_reranker(mined, base_dir, output_dir, train_config, on_epoch=on_epoch, dev=dev)
        mlflow.log_metrics({"train_seconds": result.seconds, "train_pairs": result.pairs})
        mlflow.log_artifacts(str(result.model_dir), artifact_path="model")
        model_uri = (
            tracker.register_model(run.info.run_id, "model", name=REGISTERED_RERANKER)
            if config.register_model
            else str(result.model_dir)
        )
        mlflow.set_tag("model_uri", model_uri)
    final = result.history[-1] if result.history else {}
    return MaterializeResult(
        metadata={
            "model_uri": model_uri,
            "model_dir": MetadataValue.path(str(result.model_dir)),
            "mlflow_run": run.info.run_id,
            **mlflow_links(tracker, {"mlflow_run_url": (run.info.experiment_id, run.info.run_id)}),
            "examples": MetadataValue.json(origins),
            "train_pairs": result.pairs,
            "positive_pairs": result.positives,
            "train_seconds": round(result.seconds, 1),
            "history": MetadataValue.json(result.history),
            **{f"final_{metric_name(key)}": value for key, value in final.items() if key.startswith("dev_")},
            "next": f"serve it: RAG_RERANK_MODEL={model_uri} rag-serve serve (measure first: evals/bench_rerank.py)",
            "seconds": round(time.perf_counter() - started, 1),
        }
    )


RERANKER_ASSETS = [reranker_model]
