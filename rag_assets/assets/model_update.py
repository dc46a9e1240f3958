"""Model updates that run themselves: what starts one, what it ends with, and the tags that tell its story.

An update is one run of `model_update_experiment_job` or `model_update_promote_job` (rag_assets/jobs.py):
fine-tune → candidate build → offline evaluation with the gate → then, per RAG_AUTO_UPDATE_ACTION, either
`promoted_index` (the candidate had to beat the served build: the improvement rule) or `update_experiment`
here (the candidate had only not to be worse: the tolerance rule; users decide in an A/B test between the
served build and the candidate, which `experiment_decision_sensor` hands to `experiment_report` once every arm
has its declared sample size). `model_update_sensor` and `model_update_schedule` start the runs.

Each step leaves its result on the run as a tag (the fine-tune's MLflow run, the candidate collection, the
gate, the experiment), and a failed step leaves its reason: the run list in the Dagster UI reads as the
update's history, and `run_failure_alert` sends the tags with the alert.
"""

from dataclasses import dataclass
from datetime import UTC, datetime

from dagster import (
    AssetExecutionContext,
    AssetKey,
    Config,
    ConfigurableResource,
    DagsterInstance,
    Failure,
    HookContext,
    MaterializeResult,
    MetadataValue,
    asset,
    failure_hook,
    success_hook,
)
from pydantic import Field

from rag_assets.assets.retrieval_eval import retrieval_eval_report
from rag_assets.resources import EvaluationResource
from rag_core.answerers import LOCAL_PROVIDERS
from rag_core.errors import Refusal
from rag_core.experiment_rule import DecisionRule
from rag_core.experiments import Arm, ExperimentStore, new_experiment
from rag_core.querylog import ServingDatabase
from rag_core.settings import Settings

FINETUNE = "finetuned_embedding_model"
PROMOTE, EXPERIMENT = "promote", "experiment"
# Run tags: what started the update, and what each step produced.
UPDATE_TAG = "rag/update"  # why: `pairs` (the sensor) or `schedule`
PAIRS_TAG = "rag/update-pairs"
ACTION_TAG = "rag/update-action"
MLFLOW_RUN_TAG = "rag/update-mlflow-run"
MODEL_TAG = "rag/update-model"
CANDIDATE_TAG = "rag/update-candidate"
GATE_TAG = "rag/update-gate"
EXPERIMENT_TAG = "rag/update-experiment"
FAILED_TAG = "rag/update-failed"
STEP_TAGS = {  # step → {its metadata key: the run tag it becomes}
    FINETUNE: {"mlflow_run": MLFLOW_RUN_TAG, "model_uri": MODEL_TAG},
    "candidate_index": {"collection": CANDIDATE_TAG},
    "retrieval_eval_report": {"gate_reason": GATE_TAG},
}
RULE = DecisionRule()


@dataclass(frozen=True)
class GainedPairs:
    """Training pairs a fine-tune now would have that the last one did not."""

    feedback: int  # answers users marked relevant since the last fine-tune
    synthetic: int  # the synthetic question budget, when a generative LLM can write them
    since: datetime | None  # the last fine-tune's materialization; None = never fine-tuned

    @property
    def total(self) -> int:
        return self.feedback + self.synthetic

    def describe(self) -> str:
        since = f"since the fine-tune of {self.since:%Y-%m-%d %H:%M} UTC" if self.since else "(never fine-tuned)"
        return f"{self.total} training pairs {since}: {self.feedback} from feedback, {self.synthetic} synthetic"


def last_finetune(instance: DagsterInstance) -> datetime | None:
    records = instance.fetch_materializations(AssetKey(FINETUNE), limit=1).records
    return datetime.fromtimestamp(records[0].timestamp, UTC) if records else None


def gained_pairs(instance: DagsterInstance, evaluation: EvaluationResource, synthetic_budget: int) -> GainedPairs:
    """Relevant feedback since the last fine-tune, plus the synthetic budget when the LLM is generative (the
    budget is what each fine-tune writes, not a count of new chunks: RAG_AUTO_UPDATE_SYNTHETIC_QUESTIONS is
    kept below the threshold so that feedback always has to arrive)."""
    since = last_finetune(instance)
    database = ServingDatabase(evaluation.serving_db_url)
    try:
        feedback = database.relevant_pairs_since(since)
    finally:
        database.close()
    generative = not evaluation.llm().model.startswith(LOCAL_PROVIDERS)
    return GainedPairs(feedback, synthetic_budget if generative else 0, since)


class ModelUpdateResource(ConfigurableResource):
    """The RAG_AUTO_UPDATE_* settings: when an update starts, and what it ends with."""

    min_pairs: int = 200
    action: str = EXPERIMENT
    synthetic_questions: int = 0
    candidate_share: float = 0.5
    min_samples: int = RULE.min_samples
    primary_metric: str = RULE.primary_metric
    guardrails: list[str] = list(RULE.guardrails)

    @classmethod
    def from_settings(cls, settings: Settings) -> "ModelUpdateResource":
        return cls(
            min_pairs=settings.auto_update_min_pairs,
            action=settings.auto_update_action,
            synthetic_questions=settings.auto_update_synthetic_questions,
            candidate_share=settings.auto_update_experiment_share,
            min_samples=settings.auto_update_experiment_min_samples,
            primary_metric=settings.auto_update_experiment_primary,
            guardrails=list(settings.auto_update_experiment_guardrails),
        )

    def run_config(self, gained: GainedPairs) -> dict[str, object]:
        """What the update's steps are asked to do, decided here once: the synthetic questions the fine-tune
        writes and, for an experiment, its split and rule."""
        ops: dict[str, object] = {FINETUNE: {"config": {"synthetic_questions": gained.synthetic}}}
        if self.action == EXPERIMENT:
            experiment = {
                "candidate_share": self.candidate_share,
                "min_samples": self.min_samples,
                "primary_metric": self.primary_metric,
                "guardrails": self.guardrails,
            }
            ops["update_experiment"] = {"config": experiment}
        return {"ops": ops}

    def tags(self, reason: str, gained: GainedPairs) -> dict[str, str]:
        return {UPDATE_TAG: reason, PAIRS_TAG: str(gained.total), ACTION_TAG: self.action}


class UpdateExperimentConfig(Config):
    candidate_share: float = Field(0.5, gt=0, lt=1, description="The candidate's share; the served build the rest.")
    min_samples: int = Field(RULE.min_samples, ge=1, description="Observations per arm before any verdict.")
    primary_metric: str = Field(RULE.primary_metric, description="relevance_rate or mean_rating.")
    guardrails: list[str] = Field(list(RULE.guardrails), description="Metrics the candidate may not regress.")


def run_metadata(instance: DagsterInstance, run_id: str, asset: str) -> dict[str, object]:
    """What `asset` recorded in this run; {} when it did not materialize in it (another run's is not ours)."""
    event = instance.get_latest_materialization_event(AssetKey(asset))
    if event is None or event.run_id != run_id or event.asset_materialization is None:
        return {}
    return {key: value.value for key, value in event.asset_materialization.metadata.items()}


def experiment_name(run_id: str) -> str:
    return f"model-update-{run_id[:8]}"


@asset(group_name="models", deps=[retrieval_eval_report], kinds={"sql"})
def update_experiment(
    context: AssetExecutionContext, config: UpdateExperimentConfig, evaluation: EvaluationResource
) -> MaterializeResult:
    """An A/B test between the served build (the control arm, `served`) and the candidate this run built and
    evaluated (`candidate`), created as `rag experiment create` creates one. `experiment_decision_sensor` runs
    `experiment_report` once every arm has its sample size; a ship promotes the candidate past the gate."""
    report = run_metadata(context.instance, context.run_id, "retrieval_eval_report")
    if not report:
        raise Failure("retrieval_eval_report did not run in this run — the update has no candidate to test")
    candidate, served = str(report["evaluated_collection"]), str(report["served_collection"])
    if not report.get("gate_passed"):
        raise Failure(f"{candidate} did not pass the quality gate ({report.get('gate_reason')}); {served} stays")
    if candidate == served:
        raise Failure(f"the evaluated build {served} is the served one — build a candidate first (candidate_index)")
    rule = DecisionRule(
        min_samples=config.min_samples,
        primary_metric=config.primary_metric,
        guardrails=tuple(config.guardrails),
        control="served",
    )
    arms = [
        Arm("served", round(1 - config.candidate_share, 6), collection=served),
        Arm("candidate", config.candidate_share, collection=candidate),
    ]
    database = ServingDatabase(evaluation.serving_db_url)
    try:
        wanted = new_experiment(experiment_name(context.run_id), arms, rule)
        experiment = ExperimentStore(database.engine).create(wanted)
    except (ValueError, Refusal) as refused:
        raise Failure(f"{refused}; the candidate {candidate} waits and {served} stays served") from refused
    finally:
        database.close()
    context.instance.add_run_tags(context.run_id, {EXPERIMENT_TAG: experiment.name})
    context.log.info(f"A/B test {experiment.name}: {served} (control) against {candidate}")
    return MaterializeResult(
        metadata={
            "experiment": experiment.name,
            "control_collection": served,
            "candidate_collection": candidate,
            "candidate_share": config.candidate_share,
            "rule": MetadataValue.json(experiment.to_dict()["rule"]),
            "next": f"experiment_decision_sensor runs experiment_report once each arm has {config.min_samples} "
            f"{config.primary_metric} observations (`rag experiment report {experiment.name}` any time)",
        }
    )


@success_hook(name="tag_update_step")
def tag_update_step(context: HookContext) -> None:
    """The step's result as a run tag: the fine-tune's MLflow run and model, the candidate, the gate."""
    wanted = STEP_TAGS.get(context.op.name, {})
    found = run_metadata(context.instance, context.run_id, context.op.name) if wanted else {}
    tags = {tag: str(found[key])[:200] for key, tag in wanted.items() if key in found}
    if tags:
        context.instance.add_run_tags(context.run_id, tags)


@failure_hook(name="tag_update_failure")
def tag_update_failure(context: HookContext) -> None:
    """Why the update stopped, on the run: the gate's reason when the gate refused the candidate, else the
    failed step's error. The served build was not touched (only the last step moves anything)."""
    report = run_metadata(context.instance, context.run_id, "retrieval_eval_report")
    if report and report.get("gate_passed") is False:
        reason = f"the gate refused {report['evaluated_collection']}: {report['gate_reason']}"
    else:
        error = context.op_exception
        reason = f"{context.op.name}: {getattr(error, 'description', None) or error}"
    context.instance.add_run_tags(context.run_id, {FAILED_TAG: reason[:500]})


UPDATE_HOOKS = {tag_update_step, tag_update_failure}
