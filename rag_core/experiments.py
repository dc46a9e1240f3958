"""Online A/B experiments: a named split of live traffic between arms, stored in the serving database.

An arm is a served build (a collection), a retrieval configuration (mode, fusion and its weights, top_k), an
answerer (an `RAG_LLM_MODEL`-style model), or a combination; what it leaves unset is served as usual.
Assignment is a hash of the experiment id and a stable unit (the API key, or a caller's `user_id`), so one
user always sees one arm. The query log records the experiment and arm of every query, so feedback joins
back to the arm; `arm_metrics` reads them, `decide` applies the rule the experiment declared when it was
created, and holds back any verdict until every arm has the declared sample size (no peeking)."""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from rag_core.errors import Refusal
from rag_core.experiment_rule import METRICS, DecisionRule
from rag_core.querylog import feedback, queries
from rag_core.retrieval import FusionConfig
from rag_core.stats import (
    STATISTICS,
    Comparison,
    Estimate,
    bootstrap,
    bootstrap_difference,
    mean,
    two_proportions,
    wilson,
)
from rag_core.tables import create_tables
from rag_core.tenants import validate_tenant

RUNNING, PAUSED, STOPPED = "running", "paused", "stopped"
SHIP, KEEP, CONTINUE = "ship", "keep", "continue"
NAME_PATTERN = r"[a-z0-9][a-z0-9_-]{0,62}"  # fullmatch
MODES = ("dense", "bm25", "hybrid")
RETRIEVAL_STAGES = ("embed", "search", "rerank")

metadata = sa.MetaData()
experiments = sa.Table(
    "rag_experiments",
    metadata,
    sa.Column("experiment_id", sa.String(32), primary_key=True),
    sa.Column("name", sa.String(64), nullable=False, unique=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("arms", sa.Text, nullable=False),
    sa.Column("excluded_tenants", sa.Text, nullable=False),
    sa.Column("rule", sa.Text, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    # {arm: nDCG@10 over the eval dataset's judged queries}, from `rag experiment replay`.
    sa.Column("replay", sa.Text, nullable=True),
)


class UnknownExperiment(Refusal):
    """No experiment of that name."""


@dataclass(frozen=True)
class Arm:
    """One side of an experiment. Unset fields (None / "") serve what the deployment serves."""

    name: str
    share: float
    collection: str = ""  # a build of the alias; "" = the served one
    mode: str | None = None
    top_k: int | None = None
    fusion: str | None = None  # "rrf" | "convex"
    dense_weight: float | None = None
    bm25_weight: float | None = None
    rrf_k: int | None = None
    llm_model: str = ""

    def validate(self) -> None:
        if not re.fullmatch(NAME_PATTERN, self.name):
            raise ValueError(f"arm name {self.name!r}: use lower-case letters, digits, _ and - (at most 63)")
        if not 0 < self.share <= 1:
            raise ValueError(f"arm {self.name}: share {self.share} must be in (0, 1]")
        if self.mode is not None and self.mode not in MODES:
            raise ValueError(f"arm {self.name}: mode {self.mode!r} is not one of {', '.join(MODES)}")
        if self.fusion is not None and self.fusion not in ("rrf", "convex"):
            raise ValueError(f"arm {self.name}: fusion {self.fusion!r} is not rrf or convex")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"arm {self.name}: top_k must be at least 1")
        for weight in (self.dense_weight, self.bm25_weight):
            if weight is not None and not 0 <= weight <= 1:
                raise ValueError(f"arm {self.name}: fusion weights are between 0 and 1")

    def overrides_fusion(self, fusion: FusionConfig) -> FusionConfig:
        """`fusion` with what this arm sets."""
        return replace(
            fusion,
            method=self.fusion or fusion.method,
            dense_weight=fusion.dense_weight if self.dense_weight is None else self.dense_weight,
            bm25_weight=fusion.bm25_weight if self.bm25_weight is None else self.bm25_weight,
            rrf_k=self.rrf_k or fusion.rrf_k,
        )

    def describe(self) -> str:
        parts = [f"{key}={value}" for key, value in asdict(self).items() if key not in ("name", "share") and value]
        return ", ".join(parts) or "the served configuration"


@dataclass(frozen=True)
class Experiment:
    experiment_id: str
    name: str
    arms: tuple[Arm, ...]
    rule: DecisionRule
    excluded_tenants: frozenset[str] = frozenset()
    status: str = RUNNING
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    replay: dict[str, float] = field(default_factory=dict)

    @property
    def control(self) -> str:
        return self.rule.control or self.arms[0].name

    def arm(self, name: str) -> Arm:
        for arm in self.arms:
            if arm.name == name:
                return arm
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "experiment_id": self.experiment_id,
            "name": self.name,
            "status": self.status,
            "arms": [asdict(arm) for arm in self.arms],
            "rule": asdict(self.rule) | {"control": self.control},
            "excluded_tenants": sorted(self.excluded_tenants),
            "created_at": self.created_at.isoformat(),
            "replay": self.replay,
        }


def new_experiment(
    name: str, arms: Sequence[Arm], rule: DecisionRule | None = None, excluded_tenants: Sequence[str] = ()
) -> Experiment:
    """A validated experiment; raises ValueError naming what to change."""
    rule = rule or DecisionRule()
    if not re.fullmatch(NAME_PATTERN, name):
        raise ValueError(f"experiment name {name!r}: use lower-case letters, digits, _ and - (at most 63)")
    if len(arms) < 2:
        raise ValueError("an experiment needs at least two arms (the control first)")
    names = [arm.name for arm in arms]
    if len(set(names)) != len(names):
        raise ValueError(f"arm names must differ: {names}")
    for arm in arms:
        arm.validate()
    if abs(sum(arm.share for arm in arms) - 1) > 1e-6:
        raise ValueError(f"the arms' shares add up to {sum(arm.share for arm in arms):g}; they must add up to 1")
    rule.validate(arms)
    for tenant in excluded_tenants:
        validate_tenant(tenant)
    return Experiment(uuid.uuid4().hex[:16], name, tuple(arms), rule, frozenset(excluded_tenants))


# ---------------------------------------------------------------------------------------------- assignment


def bucket(experiment_id: str, unit: str) -> float:
    """A point in [0, 1) fixed by (experiment, unit): the same unit always lands in the same place, and
    another experiment's split is independent of this one's."""
    digest = hashlib.sha256(f"{experiment_id}\x00{unit}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign(experiment: Experiment, unit: str, tenant: str) -> Arm | None:
    """The arm `unit` sees; None for an excluded tenant."""
    if tenant in experiment.excluded_tenants:
        return None
    point, edge = bucket(experiment.experiment_id, unit), 0.0
    for arm in experiment.arms:
        edge += arm.share
        if point < edge:
            return arm
    return experiment.arms[-1]  # shares add up to 1 within rounding


# ------------------------------------------------------------------------------------------------- storage


class ExperimentStore:
    """Experiments in the serving database. At most one runs at a time: two would split the same traffic
    and each one's arms would carry the other's effect."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        create_tables(metadata, engine)

    def create(self, experiment: Experiment) -> Experiment:
        with self.engine.begin() as connection:
            if connection.execute(sa.select(experiments.c.name).where(experiments.c.name == experiment.name)).first():
                raise Refusal(f"an experiment named {experiment.name} exists already — choose another name")
            self._refuse_second_running(connection, experiment.name)
            now = datetime.now(UTC)
            connection.execute(
                experiments.insert().values(
                    experiment_id=experiment.experiment_id,
                    name=experiment.name,
                    status=RUNNING,
                    arms=json.dumps([asdict(arm) for arm in experiment.arms]),
                    excluded_tenants=json.dumps(sorted(experiment.excluded_tenants)),
                    rule=json.dumps(asdict(experiment.rule)),
                    created_at=now,
                    updated_at=now,
                )
            )
        return self.get(experiment.name)

    def get(self, name: str) -> Experiment:
        with self.engine.connect() as connection:
            row = connection.execute(sa.select(experiments).where(experiments.c.name == name)).mappings().first()
        if row is None:
            raise UnknownExperiment(f"no experiment named {name} — `rag experiment list` shows them")
        return _experiment(row)

    def list(self) -> list[Experiment]:
        with self.engine.connect() as connection:
            rows = connection.execute(sa.select(experiments).order_by(experiments.c.created_at.desc())).mappings()
            return [_experiment(row) for row in rows]

    def running(self) -> Experiment | None:
        with self.engine.connect() as connection:
            row = connection.execute(sa.select(experiments).where(experiments.c.status == RUNNING)).mappings().first()
        return _experiment(row) if row is not None else None

    def set_status(self, name: str, status: str) -> Experiment:
        """pause (running → paused), resume (paused → running) or stop (for good)."""
        current = self.get(name)
        if current.status == STOPPED:
            raise Refusal(f"experiment {name} is stopped for good — create a new one to test again")
        with self.engine.begin() as connection:
            if status == RUNNING:
                self._refuse_second_running(connection, name)
            connection.execute(
                experiments.update()
                .where(experiments.c.name == name)
                .values(status=status, updated_at=datetime.now(UTC))
            )
        return self.get(name)

    def record_replay(self, name: str, ndcg: dict[str, float]) -> None:
        with self.engine.begin() as connection:
            connection.execute(
                experiments.update().where(experiments.c.name == name).values(replay=json.dumps(ndcg))
            )

    @staticmethod
    def _refuse_second_running(connection: sa.Connection, name: str) -> None:
        other = connection.execute(
            sa.select(experiments.c.name).where((experiments.c.status == RUNNING) & (experiments.c.name != name))
        ).first()
        if other is not None:
            raise Refusal(
                f"experiment {other.name} is running — pause or stop it first (`rag experiment pause {other.name}`): "
                "two experiments would split the same traffic"
            )


def _experiment(row: sa.RowMapping) -> Experiment:
    rule = json.loads(row["rule"])
    rule["guardrails"] = tuple(rule.get("guardrails", ()))
    created = row["created_at"]
    return Experiment(
        experiment_id=row["experiment_id"],
        name=row["name"],
        arms=tuple(Arm(**arm) for arm in json.loads(row["arms"])),
        rule=DecisionRule(**rule),
        excluded_tenants=frozenset(json.loads(row["excluded_tenants"])),
        status=row["status"],
        created_at=created if created.tzinfo else created.replace(tzinfo=UTC),
        replay=json.loads(row["replay"]) if row["replay"] else {},
    )


# ------------------------------------------------------------------------------------------ observations


@dataclass
class ArmObservations:
    """What the query log and feedback hold for one arm: one entry per query, per rating, per judgement."""

    queries: int = 0
    latency_ms: list[float] = field(default_factory=list)
    answers: int = 0
    degraded: int = 0
    with_feedback: int = 0
    ratings: list[int] = field(default_factory=list)
    judgements: list[bool] = field(default_factory=list)
    chunk_ranks: list[int] = field(default_factory=list)  # 1-based rank of the chunk feedback names


def observations(engine: sa.Engine, experiment: Experiment) -> dict[str, ArmObservations]:
    """Every arm's observations, read from the query log and the feedback joined to it."""
    found = {arm.name: ArmObservations() for arm in experiment.arms}
    logged = sa.select(
        queries.c.query_id, queries.c.arm, queries.c.timings_ms, queries.c.model, queries.c.degraded,
        queries.c.chunk_ids,
    ).where(queries.c.experiment == experiment.name)
    given = (
        sa.select(feedback.c.query_id, feedback.c.rating, feedback.c.is_relevant, feedback.c.chunk_id)
        .join(queries, feedback.c.query_id == queries.c.query_id)
        .where(queries.c.experiment == experiment.name)
    )
    chunk_ids: dict[str, tuple[str, list[str]]] = {}
    with engine.connect() as connection:
        for row in connection.execute(logged):
            arm = found.get(row.arm)
            if arm is None:
                continue
            timings = json.loads(row.timings_ms)
            arm.queries += 1
            arm.latency_ms.append(sum(timings.get(stage, 0.0) for stage in RETRIEVAL_STAGES))
            if row.model:  # an answer; a retrieval has no model and cannot degrade
                arm.answers += 1
                arm.degraded += bool(row.degraded)
            chunk_ids[row.query_id] = (row.arm, json.loads(row.chunk_ids))
        rated: set[str] = set()
        for row in connection.execute(given):
            if row.query_id not in chunk_ids:
                continue
            arm_name, retrieved = chunk_ids[row.query_id]
            arm = found[arm_name]
            if row.query_id not in rated:
                rated.add(row.query_id)
                arm.with_feedback += 1
            if row.rating is not None:
                arm.ratings.append(row.rating)
            if row.is_relevant is not None:
                arm.judgements.append(bool(row.is_relevant))
            if row.chunk_id and row.chunk_id in retrieved:
                arm.chunk_ranks.append(retrieved.index(row.chunk_id) + 1)
    return found


def arm_of(engine: sa.Engine, query_id: str) -> tuple[str, str] | None:
    """(experiment, arm) that served a logged query; None outside an experiment."""
    with engine.connect() as connection:
        row = connection.execute(
            sa.select(queries.c.experiment, queries.c.arm).where(queries.c.query_id == query_id)
        ).first()
    return (row.experiment, row.arm) if row is not None and row.experiment and row.arm else None


# ---------------------------------------------------------------------------------------------- metrics


@dataclass(frozen=True)
class ArmMetrics:
    arm: str
    queries: int
    latency_p50_ms: Estimate
    latency_p95_ms: Estimate
    degraded_rate: Estimate
    feedback_rate: Estimate
    mean_rating: Estimate
    relevance_rate: Estimate
    chunk_rank: Estimate  # the mean rank of the chunk feedback names

    def estimate(self, metric: str) -> Estimate:
        return getattr(self, metric)

    def flat(self) -> dict[str, float]:
        """{metric: value, metric_n: its observations, metric_low/_high: its interval} of what was measured."""
        values: dict[str, float] = {"queries": float(self.queries)}
        for metric in (*METRICS, "chunk_rank"):
            estimate = self.estimate(metric)
            if estimate.value is not None:
                values[metric] = round(estimate.value, 6)
                values[f"{metric}_n"] = float(estimate.samples)  # the observations behind it
                if estimate.low is not None and estimate.high is not None:
                    values[f"{metric}_low"] = round(estimate.low, 6)
                    values[f"{metric}_high"] = round(estimate.high, 6)
        return values


def arm_metrics(name: str, seen: ArmObservations, confidence: float = 0.95) -> ArmMetrics:
    return ArmMetrics(
        arm=name,
        queries=seen.queries,
        latency_p50_ms=bootstrap(seen.latency_ms, STATISTICS["latency_p50_ms"], confidence),
        latency_p95_ms=bootstrap(seen.latency_ms, STATISTICS["latency_p95_ms"], confidence),
        degraded_rate=wilson(seen.degraded, seen.answers, confidence),
        feedback_rate=wilson(seen.with_feedback, seen.queries, confidence),
        mean_rating=bootstrap(seen.ratings, mean, confidence),
        relevance_rate=wilson(sum(seen.judgements), len(seen.judgements), confidence),
        chunk_rank=bootstrap(seen.chunk_ranks, mean, confidence),
    )


def compare(metric: str, control: ArmObservations, arm: ArmObservations, confidence: float) -> Comparison:
    """The test each metric takes: two proportions for rates, a bootstrap for ratings and latencies."""
    if metric == "relevance_rate":
        return two_proportions(metric, control.judgements, arm.judgements, confidence)
    if metric == "degraded_rate":
        return two_proportions(
            metric, _flags(control.degraded, control.answers), _flags(arm.degraded, arm.answers), confidence
        )
    if metric == "feedback_rate":
        return two_proportions(
            metric, _flags(control.with_feedback, control.queries), _flags(arm.with_feedback, arm.queries), confidence
        )
    values = {"mean_rating": lambda seen: seen.ratings}.get(metric, lambda seen: seen.latency_ms)
    return bootstrap_difference(metric, values(control), values(arm), STATISTICS[metric], confidence)


def _flags(hits: int, total: int) -> list[bool]:
    return [True] * hits + [False] * (total - hits)


def samples_of(metric: str, seen: ArmObservations) -> int:
    """How many observations of the primary metric an arm has: judged answers, or ratings."""
    return len(seen.judgements) if metric == "relevance_rate" else len(seen.ratings)


# --------------------------------------------------------------------------------------------- decision


@dataclass(frozen=True)
class Decision:
    verdict: str  # ship | keep | continue
    winner: str | None  # the arm to serve: the shipped one, the control kept; None while it continues
    reasons: tuple[str, ...]
    metrics: dict[str, ArmMetrics]
    comparisons: dict[str, dict[str, Comparison]]  # {arm: {metric: against the control}}


@dataclass(frozen=True)
class Report:
    experiment: Experiment
    decision: Decision

    @property
    def winner_primary(self) -> Estimate | None:
        """The winning arm's primary metric with its interval."""
        if self.decision.winner is None:
            return None
        return self.decision.metrics[self.decision.winner].estimate(self.experiment.rule.primary_metric)


def decide(experiment: Experiment, seen: dict[str, ArmObservations]) -> Decision:
    """The verdict of the experiment's declared rule on what has been observed."""
    rule, control = experiment.rule, experiment.control
    treatments = [arm.name for arm in experiment.arms if arm.name != control]
    # Bonferroni: k comparisons against the control share the error rate.
    confidence = 1 - rule.alpha / len(treatments)
    metrics = {name: arm_metrics(name, observed) for name, observed in seen.items()}
    comparisons = {
        name: {
            metric: compare(metric, seen[control], seen[name], confidence)
            for metric in (rule.primary_metric, *rule.guardrails)
        }
        for name in treatments
    }
    short = [
        f"arm {name} has {samples_of(rule.primary_metric, observed)} of the {rule.min_samples} "
        f"{rule.primary_metric} observations the rule needs"
        for name, observed in seen.items()
        if samples_of(rule.primary_metric, observed) < rule.min_samples
    ]
    if short:
        return Decision(CONTINUE, None, tuple(short), metrics, comparisons)
    reasons, winners = [], []
    higher = METRICS[rule.primary_metric]
    for name in treatments:
        primary = comparisons[name][rule.primary_metric]
        failed = [
            guard
            for guard in rule.guardrails
            if comparisons[name][guard].worse_beyond(
                METRICS[guard], rule.guardrail_tolerance * abs(metrics[control].estimate(guard).value or 0.0)
            )
        ]
        interval = f"{primary.difference:+.4f} [{primary.low:+.4f}, {primary.high:+.4f}]"
        if not primary.better(higher):
            worse = primary.better(not higher)
            reasons.append(
                f"{name} vs {control}: {rule.primary_metric} {interval} — "
                + ("significantly worse" if worse else "no significant difference")
            )
        elif failed:
            reasons.append(
                f"{name} vs {control}: {rule.primary_metric} {interval} better, but guardrails {failed} regressed"
            )
        else:
            reasons.append(f"{name} vs {control}: {rule.primary_metric} {interval} better, guardrails hold")
            winners.append((primary.difference if higher else -(primary.difference or 0.0), name))
    if winners:
        return Decision(SHIP, max(winners)[1], tuple(reasons), metrics, comparisons)
    return Decision(KEEP, control, tuple(reasons), metrics, comparisons)


def report(engine: sa.Engine, experiment: Experiment) -> Report:
    return Report(experiment, decide(experiment, observations(engine, experiment)))


def markdown(result: Report, plot: str = "") -> str:
    """The report: the rule, each arm's metrics with intervals, the comparisons, the verdict and why."""
    experiment, decision = result.experiment, result.decision
    rule = experiment.rule
    lines = [
        f"# A/B test `{experiment.name}`: **{decision.verdict}**"
        + (f" — winner `{decision.winner}`" if decision.winner else ""),
        "",
        f"Rule (declared at creation): primary metric `{rule.primary_metric}`, at least {rule.min_samples} "
        f"observations per arm, control `{experiment.control}`, alpha {rule.alpha}, guardrails "
        f"{', '.join(f'`{g}`' for g in rule.guardrails) or 'none'} (tolerance {rule.guardrail_tolerance:.0%}).",
        "",
    ]
    if (primary := result.winner_primary) is not None:
        lines += [f"Winner `{decision.winner}`: {rule.primary_metric} {primary.show()} (95% interval).", ""]
    lines += ["| arm | serves | share | queries | " + " | ".join(METRICS) + " | clicked rank | offline nDCG@10 |"]
    lines.append("|---" * (len(METRICS) + 6) + "|")
    for arm in experiment.arms:
        measured = decision.metrics[arm.name]
        offline = experiment.replay.get(arm.name)
        lines.append(
            f"| {arm.name} | {arm.describe()} | {arm.share:.0%} | {measured.queries} | "
            + " | ".join(measured.estimate(metric).show() for metric in METRICS)
            + f" | {measured.chunk_rank.show(2)} | {'–' if offline is None else f'{offline:.4f}'} |"
        )
    lines += ["", "## Against the control", ""]
    for name, found in decision.comparisons.items():
        for metric, comparison in found.items():
            if comparison.difference is None:
                lines.append(f"- `{name}` {metric}: not measured")
                continue
            p = "" if comparison.p_value is None else f", p = {comparison.p_value:.4g}"
            lines.append(
                f"- `{name}` {metric}: {comparison.difference:+.4f} [{comparison.low:+.4f}, {comparison.high:+.4f}]{p}"
            )
    lines += ["", "## Verdict", "", *[f"- {reason}" for reason in decision.reasons]]
    if plot:
        lines += ["", f"![per-arm metrics]({plot})"]
    return "\n".join(lines) + "\n"


def write_plot(result: Report, path: Path) -> Path:
    """Each arm's relevance rate, mean rating and retrieval p95 with their intervals, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = ("relevance_rate", "mean_rating", "latency_p95_ms")
    figure, axes = plt.subplots(1, len(shown), figsize=(4 * len(shown), 3.2))
    names = [arm.name for arm in result.experiment.arms]
    for axis, metric in zip(axes, shown, strict=True):
        estimates = [result.decision.metrics[name].estimate(metric) for name in names]
        values = [e.value or 0.0 for e in estimates]
        # A percentile interval need not contain its estimate (a p95 of few samples, resampled, skews low):
        # a bar then shows the side it lies on, never a negative length.
        below = [max(0.0, e.value - e.low) if e.value is not None and e.low is not None else 0.0 for e in estimates]
        above = [max(0.0, e.high - e.value) if e.value is not None and e.high is not None else 0.0 for e in estimates]
        colours = ["#2b8a3e" if name == result.decision.winner else "#868e96" for name in names]
        axis.bar(names, values, yerr=[below, above], capsize=6, color=colours)
        axis.set_title(metric)
    figure.suptitle(f"{result.experiment.name}: {result.decision.verdict} (95% intervals)")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
