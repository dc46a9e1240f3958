"""What the assets report and read back: MLflow metric names, one MLflow run per (build, mode) of a
retrieval evaluation (with the naive baseline and the margin over it, the judged queries as its dataset
input, and tags linking it back to the Dagster run and asset), links to MLflow runs as Dagster metadata, a
markdown report with its plots embedded, and the metadata an asset recorded at its latest materialization."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from dagster import AssetExecutionContext, AssetKey, DagsterInstance, MetadataValue

from rag_assets.resources import EvaluationResource
from rag_core.baseline import BASELINE_METRICS
from rag_core.build_record import BuildRecord
from rag_core.evaluation import EvalDataset, RetrievalEvaluation
from rag_core.retrieval import FusionConfig
from rag_core.tracking import Tracker

if TYPE_CHECKING:
    from rag_core.answer_eval import AnswerEvalResult  # importing it configures ragas: only where ragas runs


def metric_name(metric: str) -> str:
    """`ndcg@10` → `ndcg_at_10`: MLflow and Dagster metadata keys cannot hold `@`."""
    return metric.replace("@", "_at_")


def metric_names(values: Mapping[str, float], prefix: str = "") -> dict[str, float]:
    """`values` keyed by their MLflow / Dagster names, each after `prefix` (`ndcg@10` → `<prefix>ndcg_at_10`)."""
    return {f"{prefix}{metric_name(metric)}": value for metric, value in values.items()}


def baseline_metrics(evaluation: RetrievalEvaluation, modes: list[str] | None = None) -> dict[str, float]:
    """`naive_<mode>_<metric>` and `margin_<mode>_<metric>` (this build minus naive) for BASELINE_METRICS."""
    if evaluation.baseline is None:
        return {}
    margins = evaluation.margins()
    found = {}
    for mode in modes or list(margins):
        for metric in BASELINE_METRICS:
            found[f"naive_{mode}_{metric_name(metric)}"] = evaluation.baseline.modes[mode].means[metric]
            found[f"margin_{mode}_{metric_name(metric)}"] = margins[mode][metric]
    return found


@dataclass(frozen=True)
class DagsterOrigin:
    """The Dagster run and asset an MLflow run was logged from, so the MLflow UI links back to them."""

    run_id: str
    asset_key: str
    run_url: str

    @classmethod
    def of(cls, context: AssetExecutionContext, dagster_ui_url: str) -> DagsterOrigin:
        run_url = f"{dagster_ui_url.rstrip('/')}/runs/{context.run_id}"
        return cls(context.run_id, context.asset_key.to_user_string(), run_url)

    def tags(self) -> dict[str, str]:
        """Searchable tags, and the run's description (MLflow renders `mlflow.note.content` as markdown)."""
        return {
            "dagster.run_id": self.run_id,
            "dagster.asset_key": self.asset_key,
            "dagster.run_url": self.run_url,
            "mlflow.note.content": f"Logged by asset `{self.asset_key}` in Dagster run "
            f"[{self.run_id[:8]}]({self.run_url}).",
        }


def mlflow_links(tracker: Tracker, runs: Mapping[str, tuple[str, str]]) -> dict[str, MetadataValue]:
    """`{name: (experiment id, run id)}` as Dagster metadata links to the runs' pages in the MLflow UI."""
    return {name: MetadataValue.url(tracker.run_url(*ids)) for name, ids in runs.items()}


_LOCAL_IMAGE = re.compile(r"!\[([^\]]*)\]\((?!data:|https?://)([^)\s]+\.png)\)")


def embedded_report(report: Path) -> str:
    """The markdown report with each local PNG it shows inlined as a data URI: Dagster renders metadata
    markdown in the browser, where a path relative to the report's folder is a broken image."""

    def inline(match: re.Match[str]) -> str:
        image = report.parent / match.group(2)
        if not image.is_file():
            return match.group(0)
        return f"![{match.group(1)}](data:image/png;base64,{base64.b64encode(image.read_bytes()).decode()})"

    return _LOCAL_IMAGE.sub(inline, report.read_text())


def latest_metadata(instance: DagsterInstance, asset_name: str) -> dict[str, object]:
    event = instance.get_latest_materialization_event(AssetKey(asset_name))
    if event is None or event.asset_materialization is None:
        return {}
    return {key: value.value for key, value in event.asset_materialization.metadata.items()}


def fusion_params(fusion: FusionConfig) -> dict[str, object]:
    """The fusion as separate params, so MLflow's compare view can line runs up by weight."""
    return {
        "fusion_method": fusion.method,
        "dense_weight": fusion.dense_weight,
        "bm25_weight": fusion.bm25_weight,
        "rrf_k": fusion.rrf_k,
        "fusion_candidates": fusion.candidates,
        "head_bonus": fusion.head_bonus,
    }


def judged_queries_input(mlflow, dataset: EvalDataset, source: str, query_ids: list[str]):
    """The queries a run was scored on, with their judged documents, as an MLflow dataset: its digest tells
    whether two runs saw the same queries."""
    import pandas as pd

    frame = pd.DataFrame(
        {
            "query_id": query_ids,
            "query": [dataset.queries[query_id] for query_id in query_ids],
            "relevant_docs": [json.dumps(dataset.qrels.get(query_id, {}), sort_keys=True) for query_id in query_ids],
        }
    )
    return mlflow.data.from_pandas(frame, source=source, name=dataset.name, targets="relevant_docs")


def retrieval_run_name(role: str, mode: str, built: BuildRecord) -> str:
    """`served:hybrid:all-MiniLM-L6-v2:tokens256-overlap32`: the model's name stays whole."""
    return f"{role}:{mode}:{built.embedding_model or built.embedding_version}:{built.chunking}"


def log_retrieval_runs(
    tracker: Tracker,
    evaluations: dict[str, RetrievalEvaluation],
    records: dict[str, BuildRecord],
    evaluation: EvaluationResource,
    report: Path,
    origin: DagsterOrigin,
    experiment: str = "retrieval",
) -> dict[str, tuple[str, str]]:
    """One MLflow run per (build, mode), so MLflow's compare view lines them up; the report rides along.
    Each run also holds the naive baseline of its mode and the margin over it, and the judged queries as
    its dataset input. Returns `{run name: (experiment id, run id)}`."""
    dataset = evaluation.dataset()
    runs = {}
    for role, result in evaluations.items():
        built = records[result.collection]
        query_ids = sorted(next(iter(result.modes.values())).per_query["ndcg@10"])  # per metric: {query: score}
        judged = judged_queries_input(tracker.mlflow(), dataset, evaluation.dataset_dir, query_ids)
        for mode, scores in result.modes.items():
            name = retrieval_run_name(role, mode, built)
            with tracker.run(experiment, name, {"role": role, **origin.tags()}) as run:
                mlflow = tracker.mlflow()
                mlflow.log_params(
                    {
                        "collection": result.collection,
                        "model": built.embedding_version,
                        "model_uri": built.model_reference,
                        "chunking": built.chunking,
                        "mode": mode,
                        **fusion_params(evaluation.served_fusion(built)),
                        "dataset": result.dataset,
                        "queries": result.queries,
                    }
                )
                mlflow.log_input(judged, context="evaluation")
                mlflow.log_metrics(metric_names(scores.means) | baseline_metrics(result, [mode]))
                if result.reranked is not None and mode in result.reranked.modes:  # as served: reranked
                    mlflow.log_param("reranker", result.reranker)
                    mlflow.log_metrics(metric_names(result.reranked.modes[mode].means, "reranked_"))
                mlflow.log_artifacts(str(report.parent), artifact_path="report")
                runs[name] = (run.info.experiment_id, run.info.run_id)
    return runs


def log_rag_run(
    tracker: Tracker,
    collection: str,
    model_version: str,
    evaluation: EvaluationResource,
    dataset: str,
    result: AnswerEvalResult,
    report: Path,
    origin: DagsterOrigin,
) -> tuple[str, str]:
    """One MLflow run (experiment `rag`) for a ragas evaluation, with its report folder; returns its
    (experiment id, run id)."""
    with tracker.run("rag", f"ragas:{model_version}", origin.tags()) as run:
        mlflow = tracker.mlflow()
        mlflow.log_params(
            {
                "collection": collection,
                "model": model_version,
                "llm_model": evaluation.llm_model,
                "judge_model": evaluation.judge_model or "none",
                "questions": len(result.per_sample),
                "dataset": dataset,
            }
        )
        mlflow.log_metrics(metric_names(result.means))
        mlflow.log_artifacts(str(report), artifact_path="report")
    return run.info.experiment_id, run.info.run_id


def measured_build(build, query_model: str, result, mode: str) -> dict[str, object]:
    """What one build's gate figure was measured with (the gate's `…_measured` metadata): its collection, the
    query model, the queries and rows behind its nDCG@10 in the gate's mode."""
    return {
        "collection": build.collection,
        "ndcg_at_10": result.modes[mode].means["ndcg@10"],
        "queries": result.queries,
        "query_model": query_model,
        "rows": build.searcher.row_table(["chunk_id"]).num_rows,
    }
