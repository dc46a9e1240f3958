"""The promotion rules: the quality gate (improvement for a candidate, tolerance for a re-evaluated build) and
its paired bootstrap, and the dataset restricted to what an index holds. The alias history they write is tested
against Milvus Lite in tests/integration/test_build_history.py."""

import numpy as np
import pytest

from rag_core.build_record import BuildRecord
from rag_core.evaluation import EvalDataset, restrict_to_documents
from rag_core.promotion import IMPROVEMENT, TOLERANCE, fusion_verdict, gate, improvement_gate
from rag_core.retrieval import FusionConfig
from rag_core.stats import bootstrap, bootstrap_difference, paired_bootstrap_difference


def _queries(served: np.ndarray, gains: np.ndarray) -> tuple[dict[str, float], dict[str, float], float, float]:
    """Per-query nDCG@10 of a served build and of a candidate `gains` above it, with both means."""
    candidate = np.clip(served + gains, 0.0, 1.0)
    ids = [f"q{i}" for i in range(len(served))]
    candidate_scores = dict(zip(ids, candidate.tolist(), strict=True))
    return candidate_scores, dict(zip(ids, served.tolist(), strict=True)), candidate.mean(), served.mean()


def test_the_tolerance_gate_allows_the_margin_and_no_more():
    assert gate(0.60, None, 0.01).passed  # nothing promoted yet
    assert gate(0.695, 0.70, 0.01).passed and gate(0.695, 0.70, 0.01).rule == TOLERANCE
    refused = gate(0.68, 0.70, 0.01)
    assert not refused.passed and "more than 0.0100 below" in refused.reason


def test_a_tiny_gain_amid_noisy_queries_is_not_an_improvement():
    """What `rag finetune` once promoted: +0.0005 nDCG@10 on average, queries moving ±0.1 either way."""
    rng = np.random.default_rng(7)
    served = rng.uniform(0.3, 0.7, 300)
    swings = rng.choice([-0.1, 0.1], 300)
    gains = swings - swings.mean() + 0.0005
    candidate, served_scores, candidate_ndcg, served_ndcg = _queries(served, gains)
    assert gate(candidate_ndcg, served_ndcg, 0.01).passed  # the old rule let it through
    decision = improvement_gate(candidate_ndcg, served_ndcg, candidate, served_scores, min_effect=0.005)
    assert not decision.passed and decision.rule == IMPROVEMENT
    assert decision.effect == pytest.approx(0.0005, abs=1e-9)
    assert decision.effect_low < 0 < decision.effect_high
    assert "the interval is not above zero" in decision.reason and "+0.0005" in decision.reason


def test_a_clear_gain_passes_with_its_interval_in_the_reason():
    rng = np.random.default_rng(8)
    served = rng.uniform(0.3, 0.7, 300)
    candidate, served_scores, candidate_ndcg, served_ndcg = _queries(served, 0.02 + rng.normal(0, 0.03, 300))
    decision = improvement_gate(candidate_ndcg, served_ndcg, candidate, served_scores, min_effect=0.005)
    assert decision.passed and 0 < decision.effect_low < decision.effect < decision.effect_high
    assert decision.candidate_ndcg == candidate_ndcg and decision.baseline_ndcg == served_ndcg  # recorded as measured
    effect = f"nDCG@10 {decision.effect:+.4f} (95% CI {decision.effect_low:+.3f} to {decision.effect_high:+.3f}"
    assert decision.reason.startswith(effect) and decision.reason.endswith("over the served build ≥ min effect 0.005")
    again = improvement_gate(candidate_ndcg, served_ndcg, candidate, served_scores, min_effect=0.005)
    assert again == decision  # seeded: the same evaluation always gets the same verdict


def test_a_proven_gain_below_the_minimum_effect_is_refused():
    rng = np.random.default_rng(9)
    served = rng.uniform(0.3, 0.7, 300)
    candidate, served_scores, candidate_ndcg, served_ndcg = _queries(served, 0.003 + rng.normal(0, 0.002, 300))
    decision = improvement_gate(candidate_ndcg, served_ndcg, candidate, served_scores, min_effect=0.005)
    assert decision.effect_low > 0 and not decision.passed
    assert "is below the min effect 0.005" in decision.reason


def test_the_improvement_rule_pairs_only_the_queries_both_builds_answered():
    candidate = {"q1": 0.9, "q2": 0.8, "q3": 0.95, "extra": 0.0}
    served = {"q1": 0.5, "q2": 0.4, "q3": 0.55, "gone": 1.0}
    decision = improvement_gate(0.66, 0.61, candidate, served, min_effect=0.005)
    assert decision.effect == pytest.approx(0.4) and decision.passed and "3 queries" in decision.reason
    nothing = improvement_gate(0.5, 0.5, {"a": 1.0}, {"b": 1.0}, min_effect=0.005)
    assert not nothing.passed and "no judged query" in nothing.reason


def test_the_paired_bootstrap_cancels_what_a_query_shares_across_builds():
    """Query difficulty dominates per-query nDCG; pairing removes it, so a steady small gain shows up."""
    rng = np.random.default_rng(10)
    served = rng.uniform(0.0, 1.0, 200)
    candidate = served + 0.01 + rng.normal(0, 0.005, 200)
    paired = paired_bootstrap_difference("ndcg@10", served.tolist(), candidate.tolist())
    unpaired = bootstrap_difference("ndcg@10", served.tolist(), candidate.tolist(), lambda x: x.mean(axis=-1))
    assert paired.difference == pytest.approx(unpaired.difference)
    assert 0 < paired.low < paired.high and unpaired.low < 0  # only the paired interval sees the gain
    # For the mean, resampling pairs is resampling their differences with the same draws.
    differences = bootstrap((candidate - served).tolist(), lambda x: x.mean(axis=-1))
    assert (paired.low, paired.high) == pytest.approx((differences.low, differences.high))
    with pytest.raises(ValueError, match="pair them by unit"):
        paired_bootstrap_difference("ndcg@10", [0.1, 0.2], [0.3])
    assert paired_bootstrap_difference("ndcg@10", [], []).difference is None


def test_restricting_a_dataset_to_indexed_documents_drops_unanswerable_queries():
    dataset = EvalDataset("d", {"q1": "a", "q2": "b"}, {"q1": {"d1": 1, "d2": 1}, "q2": {"d9": 1}}, {"q2": "x"})
    kept = restrict_to_documents(dataset, {"d1"})
    assert kept.qrels == {"q1": {"d1": 1}} and set(kept.queries) == {"q1"} and kept.answers == {}


def test_a_tuned_fusion_is_adopted_only_when_it_holds_on_the_evaluation_queries():
    tuned = FusionConfig(dense_weight=0.7, bm25_weight=0.3)
    adopted = fusion_verdict(tuned, 0.02, current_ndcg=0.70, proposed_ndcg=0.705)
    assert adopted.adopted and FusionConfig.from_json(adopted.fusion) == tuned
    lost = fusion_verdict(tuned, 0.02, current_ndcg=0.70, proposed_ndcg=0.69)
    assert not lost.adopted and "did not carry over" in lost.reason
    nothing = fusion_verdict(None, 0.001, current_ndcg=0.70, proposed_ndcg=None)
    assert not nothing.adopted and nothing.fusion == ""


def test_a_recorded_fusion_survives_the_build_record_and_a_damaged_one_is_refused():
    tuned = FusionConfig(method="rrf", rrf_k=30, dense_weight=1.0, bm25_weight=1.0, candidates=80)
    record = BuildRecord.from_properties(BuildRecord(fusion=tuned.to_json()).to_properties())
    assert FusionConfig.from_json(record.fusion) == tuned
    with pytest.raises(ValueError, match="not a recorded fusion"):
        FusionConfig.from_json('{"method": "magic"}')
