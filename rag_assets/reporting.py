"""What the assets report and read back: MLflow metric names, one MLflow run per (build, mode) of a
retrieval evaluation (with the naive baseline and the margin over it), and the metadata an asset recorded
at its latest materialization."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from dagster import AssetKey, DagsterInstance

from rag_assets.resources import EvaluationResource
from rag_core.baseline import BASELINE_METRICS
from rag_core.build_record import BuildRecord
from rag_core.evaluation import RetrievalEvaluation
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


def latest_metadata(instance: DagsterInstance, asset_name: str) -> dict[str, object]:
    event = instance.get_latest_materialization_event(AssetKey(asset_name))
    if event is None or event.asset_materialization is None:
        return {}
    return {key: value.value for key, value in event.asset_materialization.metadata.items()}


def log_retrieval_runs(
    tracker: Tracker,
    evaluations: dict[str, RetrievalEvaluation],
    records: dict[str, BuildRecord],
    evaluation: EvaluationResource,
    report: Path,
    experiment: str = "retrieval",
) -> list[str]:
    """One MLflow run per (build, mode), so MLflow's compare view lines them up; the report rides along.
    Each run also holds the naive baseline of its mode and the margin over it."""
    run_ids = []
    for role, result in evaluations.items():
        built = records[result.collection]
        for mode, scores in result.modes.items():
            with tracker.run(experiment, f"{role}:{mode}:{result.collection[-24:]}", {"role": role}) as run:
                mlflow = tracker.mlflow()
                mlflow.log_params(
                    {
                        "collection": result.collection,
                        "model": built.embedding_version,
                        "model_uri": built.model_reference,
                        "chunking": built.chunking,
                        "mode": mode,
                        "fusion": str(evaluation.served_fusion(built)),
                        "dataset": result.dataset,
                        "queries": result.queries,
                    }
                )
                mlflow.log_metrics(metric_names(scores.means) | baseline_metrics(result, [mode]))
                mlflow.log_artifacts(str(report.parent), artifact_path="report")
                run_ids.append(run.info.run_id)
    return run_ids


def log_rag_run(
    tracker: Tracker,
    collection: str,
    model_version: str,
    evaluation: EvaluationResource,
    dataset: str,
    result: AnswerEvalResult,
    report: Path,
) -> str:
    """One MLflow run (experiment `rag`) for a ragas evaluation, with its report folder; returns its id."""
    with tracker.run("rag", f"ragas:{collection[-24:]}") as run:
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
    return run.info.run_id
