"""The promotion rules: the quality gate, and the dataset restricted to what an index holds. The alias
history they write is tested against Milvus Lite in tests/integration/test_build_history.py."""

import pytest

from rag_core.build_record import BuildRecord
from rag_core.evaluation import EvalDataset, restrict_to_documents
from rag_core.promotion import fusion_verdict, gate
from rag_core.retrieval import FusionConfig


def test_the_gate_allows_the_margin_and_no_more():
    assert gate(0.60, None, 0.01).passed  # nothing promoted yet
    assert gate(0.695, 0.70, 0.01).passed
    refused = gate(0.68, 0.70, 0.01)
    assert not refused.passed and "more than 0.0100 below" in refused.reason


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
