"""The reranker: a cross-encoder trained from the bundled MiniLM, tracked and registered in MLflow.

`reranker_model` learns from the train qrels of the configured dataset and from answers users marked
relevant, with hard negatives mined as for the embedder (rag_core.finetune). Then the reranker gate
(rag_core.rerank_tuning) judges it on the served build: the blend weight is picked on the train questions it
held out, and the build reranked at that weight must beat itself unreranked on the evaluation split by
RAG_RERANK_MIN_GAIN (paired interval above zero). Only then is the reranker recorded on the build, and the
API (`RAG_RERANK_MODEL=auto`, the default) reranks with it from its next poll. Whether it earns its latency is
also measured by `evals/bench_rerank.py`.
"""


import time
from dataclasses import dataclass
from pathlib import Path

from dagster import AssetExecutionContext, Config, Failure, MaterializeResult, MetadataValue, asset
from pydantic import Field

from rag_assets.reporting import DagsterOrigin, metric_name, mlflow_links
from rag_assets.resources import EmbedderResource, EvaluationResource, MilvusResource, TrackingResource
from rag_core.build_record import BuildRecord
from rag_core.evaluation import EvalDataset, judged_dataset
from rag_core.finetune import TrainingExample, load_corpus, pairs_from_feedback, pairs_from_qrels
from rag_core.models import BUNDLED_MODEL
from rag_core.promotion import adopt_reranker, may_record_reranker, rerank_modes_text
from rag_core.querylog import ServingDatabase
from rag_core.rerank import (
    HeldOutQuestions,
    Reranker,
    RerankerConfig,
    is_cross_encoder,
    mine_reranker_negatives,
    rerank_dev_set,
    resolve_reranker,
    split_dev,
    train_reranker,
)
from rag_core.rerank_tuning import RerankerGate, RerankVerdict, adopted_modes, verdicts_table
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
    gate: bool = Field(
        True,
        description="Judge the reranker on the served build (weight picked on the held-out train questions, gain "
        "proven on the evaluation split) and record it there when it passes: `auto` serving then reranks.",
    )
    judge: str = Field(
        "",
        description="Train nothing: judge this trained reranker (models:/rag-reranker/N or a directory) on the "
        "served build, its weight picked on the train questions it held out (recorded with the model) — what "
        "`rerank_after_promotion_sensor` asks for when a promotion replaced a build that reranked. It is not "
        "recorded over another reranker the build already serves.",
    )


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


def _held_out_questions(held_out: HeldOutQuestions, train: EvalDataset) -> EvalDataset:
    """The train split's questions the reranker never trained on, with their judgements."""
    held = {query_id for query_id in held_out.query_ids if query_id in train.queries and query_id in train.qrels}
    return EvalDataset(
        f"{train.name} (held out of training)",
        {query_id: train.queries[query_id] for query_id in held},
        {query_id: train.qrels[query_id] for query_id in held},
    )


@dataclass(frozen=True)
class Judgement:
    """A reranker's verdicts on the served build (None: not judged, `collection` then says why) and whether it
    was recorded there."""

    verdicts: dict[str, RerankVerdict] | None
    collection: str  # the build judged on, or why none was
    kept: str = ""  # the other reranker the build records, left in place (`replace_recorded` off)

    @property
    def recorded(self) -> dict[str, float]:
        """{mode: weight} recorded on the build: what `auto` serving reranks from its next poll."""
        return adopted_modes(self.verdicts) if self.verdicts and not self.kept else {}


def judge_reranker(
    model_dir: Path,
    model_uri: str,
    held_out: HeldOutQuestions,
    milvus: MilvusResource,
    embedder: EmbedderResource,
    evaluation: EvaluationResource,
    replace_recorded: bool = True,
) -> Judgement:
    """The reranker's verdicts on the served build, in each evaluated mode; it is recorded on the build for the
    modes it passed in — over another reranker the build records only with `replace_recorded`."""
    if not held_out.query_ids:
        return Judgement(None, "no train questions were held out of training to pick its weight on (dev_fraction 0)")
    reads = _train_split_name(evaluation)
    if held_out.dataset != reads:
        return Judgement(None, f"it held out questions of {held_out.dataset}, the evaluation reads {reads}")
    with milvus.store() as store:
        if store.alias_target() is None:
            return Judgement(None, f"alias {milvus.alias} serves nothing yet (`rag index`, then `rag train-reranker`)")
    with milvus.searchable(lambda store: {"served": milvus.served_collection(store)}) as builds:
        served = builds["served"]
        doc_ids = served.searcher.doc_ids()
        try:
            tuning = judged_dataset(
                _held_out_questions(held_out, evaluation.dataset(evaluation.train_split)),
                doc_ids,
                served.collection,
            )
            gate = judged_dataset(evaluation.dataset(), doc_ids, served.collection, evaluation.max_queries)
        except (FileNotFoundError, ValueError) as error:
            return Judgement(None, f"no judged queries to judge it on in {served.collection}: {error}")
        verdicts = RerankerGate(
            served.searcher,
            embedder.load_build(served.properties),
            evaluation.served_fusion(BuildRecord.from_properties(served.properties)),
            Reranker(model_dir),
            tuning,
            gate,
            evaluation.tenant,
            evaluation.rerank_candidates,
            evaluation.rerank_min_gain,
        ).verdicts(evaluation.modes)
    adopted = adopted_modes(verdicts)
    if adopted:
        with milvus.store() as store:
            record = store.record(served.collection)
            if not may_record_reranker(record, model_uri, replace_recorded):
                return Judgement(verdicts, served.collection, kept=str(record.reranker))
            adopt_reranker(store, served.collection, model_uri, adopted)
    return Judgement(verdicts, served.collection)


def _train_split_name(evaluation: EvaluationResource) -> str:
    """How a reranker records the questions it held out: "<dataset folder>/<train split>"."""
    return f"{Path(evaluation.dataset_dir).name}/{evaluation.train_split}"


def gate_summary(judgement: Judgement) -> str:
    """One line: the modes it is served in, or why none (each mode's reason is in the metadata)."""
    if judgement.verdicts is None:
        return f"not judged: {judgement.collection}"
    passed = adopted_modes(judgement.verdicts)
    if passed and judgement.kept:
        where = f"{judgement.collection}, not recorded: the build serves {judgement.kept}, proven there since"
        return f"passed in {rerank_modes_text(passed)} on {where}"
    return f"served in {rerank_modes_text(passed) if passed else 'no mode'} on {judgement.collection}"


def _gate_metadata(judgement: Judgement) -> dict[str, object]:
    summary = gate_summary(judgement)
    verdicts = judgement.verdicts
    if verdicts is None:
        return {"rerank_gate": summary, "rerank_adopted": MetadataValue.json({})}
    per_mode = {
        f"rerank_gate_{mode}": verdict.reason for mode, verdict in verdicts.items()
    }
    return {
        "rerank_gate": summary,
        "rerank_adopted": MetadataValue.json(judgement.recorded),
        "rerank_collection": judgement.collection,
        **per_mode,
        "rerank_weights": MetadataValue.md(verdicts_table(verdicts)),
    }


def _log_gate(mlflow, judgement: Judgement) -> None:
    """The gate's outcome on the MLflow run: per mode the weight, nDCG@10 without and with, adopted."""
    for mode, verdict in (judgement.verdicts or {}).items():
        mlflow.log_metrics(
            {
                f"gate_{mode}_weight": verdict.weight,
                f"gate_{mode}_ndcg_at_10_without": verdict.without,
                f"gate_{mode}_ndcg_at_10_with": verdict.with_reranker,
                f"gate_{mode}_adopted": float(mode in judgement.recorded),
            }
        )
    mlflow.set_tag("rerank_gate", gate_summary(judgement))


def _log_verdicts(context: AssetExecutionContext, judgement: Judgement) -> None:
    for verdict in (judgement.verdicts or {}).values():
        (context.log.info if verdict.adopted else context.log.warning)(f"reranker gate: {verdict.reason}")
    if judgement.verdicts is None or judgement.kept:
        context.log.warning(f"reranker gate: {gate_summary(judgement)}")


def _next_step(judgement: Judgement, model_uri: str) -> str:
    if judgement.recorded:
        return "served in those modes from the API's next poll (RAG_RERANK_MODEL=auto)"
    return f"not served by `auto`; to force it: RAG_RERANK_MODEL={model_uri} (evals/bench_rerank.py measures)"


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
    order), the model as an artifact, and a new version of the registered model `rag-reranker`. With
    `judge`, nothing is trained: a reranker trained before is judged on the served build (its own MLflow run)."""
    if config.judge.strip():
        return _judge_trained(context, config.judge.strip(), embedder, evaluation, tracking, milvus)
    started = time.perf_counter()
    dataset_dir = Path(evaluation.dataset_dir)
    corpus = load_corpus(dataset_dir)
    train_config = RerankerConfig.preset(config.preset, config.epochs)
    examples, dev_examples = split_dev(
        qrels_examples(dataset_dir, evaluation.train_split, config.max_train_queries), config.dev_fraction
    )
    held_out = HeldOutQuestions.of(_train_split_name(evaluation), dev_examples)
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
                "dataset": held_out.dataset,
                "dev_queries": len(dev[0]) if dev else 0,
            }
        )

        def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
            mlflow.log_metrics({metric_name(key): value for key, value in metrics.items()}, step=epoch)
            context.log.info(f"epoch {epoch}: {metrics}")

        result = train_reranker(mined, base_dir, output_dir, train_config, on_epoch=on_epoch, dev=dev)
        held_out.save(result.model_dir)  # travels with the model: a later build is judged on the same questions
        mlflow.log_metrics({"train_seconds": result.seconds, "train_pairs": result.pairs})
        mlflow.log_artifacts(str(result.model_dir), artifact_path="model")
        model_uri = (
            tracker.register_model(run.info.run_id, "model", name=REGISTERED_RERANKER)
            if config.register_model
            else str(result.model_dir)
        )
        mlflow.set_tag("model_uri", model_uri)
        judgement = (
            judge_reranker(result.model_dir, model_uri, held_out, milvus, embedder, evaluation)
            if config.gate
            else Judgement(None, "the gate is off (gate: false)")
        )
        _log_gate(mlflow, judgement)
    _log_verdicts(context, judgement)
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
            "held_out_questions": len(held_out.query_ids),
            "train_seconds": round(result.seconds, 1),
            "history": MetadataValue.json(result.history),
            **{f"final_{metric_name(key)}": value for key, value in final.items() if key.startswith("dev_")},
            **_gate_metadata(judgement),
            "next": _next_step(judgement, model_uri),
            "seconds": round(time.perf_counter() - started, 1),
        }
    )


def _judge_trained(
    context: AssetExecutionContext,
    reference: str,
    embedder: EmbedderResource,
    evaluation: EvaluationResource,
    tracking: TrackingResource,
    milvus: MilvusResource,
) -> MaterializeResult:
    """`reranker_model` with `judge`: the reranker `reference` judged on the served build, trained again never."""
    started = time.perf_counter()
    try:
        model_dir = resolve_reranker(reference, embedder.resolver(), setting="judge")
    except (FileNotFoundError, ValueError) as error:
        raise Failure(f"cannot judge {reference!r}: {error}") from error
    held_out = HeldOutQuestions.load(model_dir)
    if held_out is None:
        raise Failure(
            f"{reference} records no held-out train questions (trained before they were kept with the model), so "
            "its weight cannot be picked without grading its own training — train a new one: `rag train-reranker`"
        )
    tracker = tracking.tracker()
    tags = {"judged_model": reference, **DagsterOrigin.of(context, tracking.dagster_ui_url).tags()}
    with tracker.run(EXPERIMENT, f"judge:{reference}", tags) as run:
        mlflow = tracker.mlflow()
        mlflow.log_params({"judged_model": reference, "dataset": held_out.dataset})
        judgement = judge_reranker(
            model_dir, reference, held_out, milvus, embedder, evaluation, replace_recorded=False
        )
        _log_gate(mlflow, judgement)
    _log_verdicts(context, judgement)
    return MaterializeResult(
        metadata={
            "model_uri": reference,
            "model_dir": MetadataValue.path(str(model_dir)),
            "judged_only": True,
            "mlflow_run": run.info.run_id,
            **mlflow_links(tracker, {"mlflow_run_url": (run.info.experiment_id, run.info.run_id)}),
            "held_out_questions": len(held_out.query_ids),
            **_gate_metadata(judgement),
            "next": _next_step(judgement, reference),
            "seconds": round(time.perf_counter() - started, 1),
        }
    )


RERANKER_ASSETS = [reranker_model]
