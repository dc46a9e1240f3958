"""The promotion rules: the quality gate, and the dataset restricted to what an index holds. The alias
history they write is tested against Milvus Lite in tests/integration/test_build_history.py."""

from rag_core.evaluation import EvalDataset, restrict_to_documents
from rag_core.promotion import gate


def test_the_gate_allows_the_margin_and_no_more():
    assert gate(0.60, None, 0.01).passed  # nothing promoted yet
    assert gate(0.695, 0.70, 0.01).passed
    refused = gate(0.68, 0.70, 0.01)
    assert not refused.passed and "more than 0.0100 below" in refused.reason


def test_restricting_a_dataset_to_indexed_documents_drops_unanswerable_queries():
    dataset = EvalDataset("d", {"q1": "a", "q2": "b"}, {"q1": {"d1": 1, "d2": 1}, "q2": {"d9": 1}}, {"q2": "x"})
    kept = restrict_to_documents(dataset, {"d1"})
    assert kept.qrels == {"q1": {"d1": 1}} and set(kept.queries) == {"q1"} and kept.answers == {}
