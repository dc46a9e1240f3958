"""What the assets report and read back: MLflow metric names, one MLflow run per (build, mode) of a
retrieval evaluation (with the naive baseline and the margin over it), and the metadata an asset recorded
at its latest materialization."""

from pathlib import Path

from dagster import AssetKey, DagsterInstance

from rag_assets.resources import EvaluationResource
from rag_core.baseline import BASELINE_METRICS
from rag_core.build_record import BuildRecord
from rag_core.evaluation import RetrievalEvaluation
from rag_core.tracking import Tracker


def metric_name(metric: str) -> str:
    """`ndcg@10` → `ndcg_at_10`: MLflow and Dagster metadata keys cannot hold `@`."""
    return metric.replace("@", "_at_")


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
                        "fusion": str(evaluation.fusion()),
                        "dataset": result.dataset,
                        "queries": result.queries,
                    }
                )
                mlflow.log_metrics(
                    {metric_name(metric): value for metric, value in scores.means.items()}
                    | baseline_metrics(result, [mode])
                )
                mlflow.log_artifacts(str(report.parent), artifact_path="report")
                run_ids.append(run.info.run_id)
    return run_ids
