"""/v1/admin/experiments: A/B experiments (create, list, pause, resume, stop, report), behind the admin key
(RAG_ADMIN_KEY) like every admin route. The same operations as `rag experiment …`, on the same serving
database; a change here is served by this process at once, by the others within RAG_ALIAS_POLL_S."""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException, status
from fastapi import Path as PathParam
from pydantic import BaseModel, Field

from rag_core.errors import Refusal
from rag_core.experiment_rule import DecisionRule
from rag_core.experiments import (
    NAME_PATTERN,
    PAUSED,
    RUNNING,
    STOPPED,
    Arm,
    Experiment,
    UnknownExperiment,
    markdown,
    new_experiment,
    report,
)
from rag_core.tenants import TENANT_PATTERN
from rag_serving.deps import KeyFirstRoute, admin, get_state
from rag_serving.routers.admin import ADMIN_REFUSED
from rag_serving.schemas import error_responses
from rag_serving.state import ServingState

router = APIRouter(
    prefix="/v1/admin/experiments",
    tags=["admin"],
    route_class=KeyFirstRoute,
    dependencies=[Depends(admin)],
    responses={**error_responses(429), **ADMIN_REFUSED},
)
StateDep = Annotated[ServingState, Depends(get_state)]
ExperimentName = Annotated[str, PathParam(pattern=f"^{NAME_PATTERN}$")]
Metric = Literal["relevance_rate", "mean_rating", "feedback_rate", "latency_p50_ms", "latency_p95_ms", "degraded_rate"]


class ArmIn(BaseModel):
    """An arm: what it leaves unset (null / "") is served as the deployment serves it."""

    name: str = Field(..., pattern=f"^{NAME_PATTERN}$")
    share: float = Field(..., gt=0, le=1, description="Its share of the traffic; the shares add up to 1.")
    collection: str = Field("", max_length=255, description="A build of the alias (`rag builds`); '' = the served.")
    mode: Literal["dense", "bm25", "hybrid"] | None = None
    top_k: int | None = Field(None, ge=1)
    fusion: Literal["rrf", "convex"] | None = None
    dense_weight: float | None = Field(None, ge=0, le=1)
    bm25_weight: float | None = Field(None, ge=0, le=1)
    rrf_k: int | None = Field(None, ge=1, le=1000)
    llm_model: str = Field("", max_length=256, description="The answerer (an RAG_LLM_MODEL value).")


class RuleIn(BaseModel):
    """The decision rule, declared before any data (see rag_core.experiments.DecisionRule)."""

    min_samples: int = Field(200, ge=1, description="Observations of the primary metric each arm needs first.")
    primary_metric: Literal["relevance_rate", "mean_rating"] = "relevance_rate"
    guardrails: list[Metric] = ["latency_p95_ms", "degraded_rate"]
    control: str = Field("", description="The arm the others are compared with; '' = the first.")
    alpha: float = Field(0.05, gt=0, lt=0.5)
    guardrail_tolerance: float = Field(0.1, ge=0, description="How much worse than the control a guardrail may be.")


class ExperimentCreate(BaseModel):
    name: str = Field(..., pattern=f"^{NAME_PATTERN}$")
    arms: list[ArmIn] = Field(..., min_length=2, max_length=8)
    rule: RuleIn = Field(default_factory=RuleIn)
    excluded_tenants: list[Annotated[str, Field(pattern=TENANT_PATTERN)]] = []


class ExperimentOut(BaseModel):
    experiment_id: str
    name: str
    status: Literal["running", "paused", "stopped"]
    arms: list[ArmIn]
    rule: RuleIn
    excluded_tenants: list[str]
    created_at: datetime
    replay: dict[str, float] = Field(default_factory=dict, description="Offline nDCG@10 per arm (`replay`).")


class ExperimentList(BaseModel):
    experiments: list[ExperimentOut]


class ComparisonOut(BaseModel):
    difference: float | None
    low: float | None
    high: float | None
    p_value: float | None


class ExperimentReport(BaseModel):
    experiment: ExperimentOut
    verdict: Literal["ship", "keep", "continue"]
    winner: str | None
    reasons: list[str]
    arms: dict[str, dict[str, float]] = Field(..., description="Each arm's metrics, with `<metric>_low/_high`.")
    comparisons: dict[str, dict[str, ComparisonOut]] = Field(..., description="{arm: {metric: arm − control}}.")
    markdown: str


def _out(experiment: Experiment) -> ExperimentOut:
    return ExperimentOut(**experiment.to_dict())


def _found(state: ServingState, name: str) -> Experiment:
    try:
        return state.experiments.store.get(name)
    except UnknownExperiment as error:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(error)) from error


@router.get("")
def list_experiments(state: StateDep) -> ExperimentList:
    """Every experiment, newest first."""
    return ExperimentList(experiments=[_out(experiment) for experiment in state.experiments.store.list()])


@router.post("", status_code=status.HTTP_201_CREATED, responses=error_responses(409, 413, 422))
def create_experiment(request: ExperimentCreate, state: StateDep) -> ExperimentOut:
    """Start splitting traffic between the arms (409 while another experiment runs)."""
    rule = request.rule.model_dump() | {"guardrails": tuple(request.rule.guardrails)}
    try:
        experiment = new_experiment(
            request.name, [Arm(**arm.model_dump()) for arm in request.arms], DecisionRule(**rule),
            request.excluded_tenants,
        )
        state.experiments.check(experiment)
        created = state.experiments.store.create(experiment)
    except ValueError as error:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(error)) from error
    except Refusal as error:
        raise HTTPException(status.HTTP_409_CONFLICT, str(error)) from error
    state.experiments.changed()
    return _out(created)


@router.get("/{name}", responses=error_responses(404, 422))
def get_experiment(name: ExperimentName, state: StateDep) -> ExperimentOut:
    return _out(_found(state, name))


def _set_status(state: ServingState, name: str, target: str) -> ExperimentOut:
    _found(state, name)
    try:
        changed = state.experiments.store.set_status(name, target)
    except Refusal as error:
        raise HTTPException(status.HTTP_409_CONFLICT, str(error)) from error
    state.experiments.changed()
    return _out(changed)


@router.post("/{name}/pause", responses=error_responses(404, 409, 422))
def pause_experiment(name: ExperimentName, state: StateDep) -> ExperimentOut:
    """Stop assigning arms for now; resume continues with the same assignment."""
    return _set_status(state, name, PAUSED)


@router.post("/{name}/resume", responses=error_responses(404, 409, 422))
def resume_experiment(name: ExperimentName, state: StateDep) -> ExperimentOut:
    return _set_status(state, name, RUNNING)


@router.post("/{name}/stop", responses=error_responses(404, 409, 422))
def stop_experiment(name: ExperimentName, state: StateDep) -> ExperimentOut:
    """End it for good: traffic goes back to the served configuration; its data stays for the report."""
    return _set_status(state, name, STOPPED)


@router.get("/{name}/report", responses=error_responses(404, 422))
def experiment_report(name: ExperimentName, state: StateDep) -> ExperimentReport:
    """Each arm's metrics with intervals and the declared rule's verdict, now (the `experiment_report` asset
    records the same in Dagster and MLflow)."""
    experiment = _found(state, name)
    state.db.flush()  # the queued query-log rows count too
    result = report(state.db.engine, experiment)
    decision = result.decision
    return ExperimentReport(
        experiment=_out(experiment),
        verdict=decision.verdict,  # type: ignore[arg-type]
        winner=decision.winner,
        reasons=list(decision.reasons),
        arms={arm: metrics.flat() for arm, metrics in decision.metrics.items()},
        comparisons={
            arm: {metric: ComparisonOut(**asdict(found)) for metric, found in compared.items()}
            for arm, compared in decision.comparisons.items()
        },
        markdown=markdown(result),
    )
