"""A/B assignment (sticky, on the configured split, excluded tenants get no arm), the declared rule and its
statistics, on rag_core.experiments' and rag_core.stats' own functions."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from rag_core.experiment_rule import DecisionRule
from rag_core.experiments import CONTINUE, KEEP, SHIP, Arm, ArmObservations, assign, decide, new_experiment
from rag_core.stats import bootstrap, two_proportions, wilson


def three_arms(**rule):
    return new_experiment(
        "rerank-test",
        [Arm("control", 0.5), Arm("dense", 0.3, mode="dense"), Arm("bm25", 0.2, mode="bm25")],
        DecisionRule(**rule),
        excluded_tenants=["acme"],
    )


def test_assignment_is_sticky_per_unit() -> None:
    experiment = three_arms()
    for unit in ("key:0a1b2c", "user:alice", "user:bob"):
        first = assign(experiment, unit, "default")
        assert first is not None
        assert all(assign(experiment, unit, "default") == first for _ in range(20))
    # Another experiment splits independently: the same unit is not bound to the same place.
    other = three_arms()
    moved = sum(assign(experiment, f"user:{n}", "default") != assign(other, f"user:{n}", "default") for n in range(500))
    assert moved > 100


def test_ten_thousand_units_land_within_two_percent_of_the_split() -> None:
    experiment = three_arms()
    units = [f"user:{n}" for n in range(10_000)]
    counts = Counter(assign(experiment, unit, "default").name for unit in units)
    for arm in experiment.arms:
        assert counts[arm.name] / len(units) == pytest.approx(arm.share, abs=0.02), counts


def test_an_excluded_tenant_gets_no_arm() -> None:
    experiment = three_arms()
    assert all(assign(experiment, f"user:{n}", "acme") is None for n in range(1000))
    assert assign(experiment, "user:1", "globex") is not None


@pytest.mark.parametrize(
    ("arms", "problem"),
    [
        ([Arm("a", 0.5), Arm("b", 0.4)], "add up to 1"),
        ([Arm("a", 1.0)], "at least two arms"),
        ([Arm("a", 0.5), Arm("a", 0.5)], "must differ"),
        ([Arm("a", 0.5), Arm("b", 0.5, mode="fuzzy")], "mode"),
    ],
)
def test_an_invalid_experiment_names_the_fix(arms, problem) -> None:
    with pytest.raises(ValueError, match=problem):
        new_experiment("x", arms)


def observed(judgements: list[bool], ratings: list[int], latency_ms: float) -> ArmObservations:
    return ArmObservations(
        queries=len(judgements),
        latency_ms=[latency_ms + (n % 7) for n in range(len(judgements))],
        answers=len(judgements),
        with_feedback=len(judgements),
        ratings=ratings,
        judgements=judgements,
    )


def test_the_rule_holds_back_until_the_sample_size_then_ships_the_better_arm() -> None:
    experiment = new_experiment("ab", [Arm("control", 0.5), Arm("candidate", 0.5)], DecisionRule(min_samples=300))
    rng = random.Random(1)
    control = [rng.random() < 0.5 for _ in range(400)]
    candidate = [rng.random() < 0.7 for _ in range(400)]

    def seen(n: int) -> dict[str, ArmObservations]:
        return {
            "control": observed(control[:n], [4 if j else 2 for j in control[:n]], 10),
            "candidate": observed(candidate[:n], [4 if j else 2 for j in candidate[:n]], 10),
        }

    early = decide(experiment, seen(100))
    assert early.verdict == CONTINUE and early.winner is None  # no peeking, however large the gap
    assert "100 of the 300" in early.reasons[0]
    final = decide(experiment, seen(400))
    assert final.verdict == SHIP and final.winner == "candidate"
    primary = final.comparisons["candidate"]["relevance_rate"]
    assert primary.low > 0 and primary.p_value < 0.05


def test_a_guardrail_regression_or_no_difference_keeps_the_control() -> None:
    experiment = new_experiment("ab", [Arm("control", 0.5), Arm("slow", 0.5)], DecisionRule(min_samples=300))
    rng = random.Random(2)
    control = [rng.random() < 0.5 for _ in range(400)]
    better = [rng.random() < 0.7 for _ in range(400)]
    slow = decide(experiment, {"control": observed(control, [], 10), "slow": observed(better, [], 40)})
    assert slow.verdict == KEEP and slow.winner == "control"
    assert "latency_p95_ms" in slow.reasons[0]
    same = decide(experiment, {"control": observed(control, [], 10), "slow": observed(control, [], 10)})
    assert same.verdict == KEEP and "no significant difference" in same.reasons[0]


def test_intervals() -> None:
    rate = wilson(30, 100)
    assert rate.low < 0.3 < rate.high and rate.low > 0.2 and rate.high < 0.4
    assert two_proportions("r", [True] * 50 + [False] * 50, [True] * 50 + [False] * 50).p_value == pytest.approx(1)
    mean = bootstrap([1, 2, 3, 4, 5] * 40, lambda samples: samples.mean(axis=-1))
    assert mean.low < 3 < mean.high and mean.high - mean.low < 0.5


def test_the_plot_draws_an_estimate_that_lies_outside_its_percentile_interval(tmp_path) -> None:
    """A p95 of few samples, resampled, gives an interval below the estimate itself: the bar must still draw
    (it failed a CI run with matplotlib's "'yerr' must not contain negative values")."""
    from rag_core.experiments import ArmMetrics, Decision, Report, write_plot
    from rag_core.stats import Estimate

    def metrics(arm: str) -> ArmMetrics:
        skewed = Estimate(120.0, 80.0, 110.0, 5)  # value above its whole interval
        rate = Estimate(0.5, 0.4, 0.6, 50)
        return ArmMetrics(arm, 50, skewed, skewed, rate, rate, Estimate(3.0, 2.5, 3.5, 50), rate, rate)

    experiment = new_experiment("ab", [Arm("control", 0.5), Arm("candidate", 0.5)], DecisionRule(min_samples=10))
    decision = Decision(CONTINUE, None, (), {"control": metrics("control"), "candidate": metrics("candidate")}, {})
    path = write_plot(Report(experiment, decision), tmp_path / "plot.png")
    assert path.exists() and path.stat().st_size > 0
