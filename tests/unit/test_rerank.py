"""The reranker's training pairs and blend, and a server that refuses to start on a bad RAG_RERANK_MODEL."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from rag_core.build_record import BuildRecord
from rag_core.evaluation import EvalDataset
from rag_core.finetune import TrainingExample
from rag_core.promotion import ServedReranker, may_record_reranker, reranker_after_promotion, served_reranker
from rag_core.query import RerankPolicy
from rag_core.rerank import HeldOutQuestions, blend, is_cross_encoder, reranker_pairs, split_dev
from rag_core.rerank_tuning import Candidates, RerankerGate, ndcg_at_10
from rag_core.retrieval import RetrievedChunk
from rag_core.settings import Settings, bundled_model_dir
from rag_serving.app import create_app
from rag_serving.state import ServingState


def example(query: str, positive: str, negative: str | None = None) -> TrainingExample:
    return TrainingExample(query, positive, negative, query_id=query, positive_id=positive)


def test_pairs_label_positives_mined_and_random_negatives() -> None:
    examples = [
        example("q1", "p1", "n1"),
        example("q1", "p1", "n1"),  # the same negative mined twice: one pair
        example("q1", "p1b", "p1"),  # a "negative" that is another positive of q1 is never a 0
        example("q2", "p2", "n2"),
        example("q3", "p3", None),
    ]
    queries, passages, labels = reranker_pairs(examples, random_negatives=1)
    pairs = list(zip(queries, passages, labels, strict=True))
    assert len(set((q, p) for q, p, _ in pairs)) == len(pairs), "no pair twice"
    positives = {(q, p) for q, p, label in pairs if label == 1.0}
    assert positives == {("q1", "p1"), ("q1", "p1b"), ("q2", "p2"), ("q3", "p3")}
    negatives = {(q, p) for q, p, label in pairs if label == 0.0}
    assert {("q1", "n1"), ("q2", "n2")} <= negatives and ("q1", "p1") not in negatives
    own = {"q1": {"p1", "p1b"}, "q2": {"p2"}, "q3": {"p3"}}
    random_ones = negatives - {("q1", "n1"), ("q2", "n2")}
    assert {q for q, _ in random_ones} == {"q1", "q2", "q3"}, "one passage of another question each"
    assert all(p not in own[q] and p in {"p1", "p1b", "p2", "p3"} for q, p in random_ones)


def test_dev_split_holds_out_whole_questions() -> None:
    examples = [example(f"q{i}", f"p{i}{j}") for i in range(20) for j in range(2)]
    train, dev = split_dev(examples, 0.25)
    assert len({e.query for e in dev}) == 5 and len(train) + len(dev) == len(examples)
    assert not {e.query for e in train} & {e.query for e in dev}
    assert split_dev(examples[:8], 0.25) == (examples[:8], []), "fewer than 10 questions: nothing held out"


def test_blend_weighs_the_cross_encoder_against_retrieval() -> None:
    logits = np.array([-3.0, 5.0, 1.0], dtype=np.float32)  # the cross-encoder prefers 1, then 2, then 0
    retrieval = np.array([0.9, 0.1, 0.5], dtype=np.float32)  # retrieval prefers 0, then 2, then 1
    assert np.array_equal(blend(logits, retrieval, 1.0), logits), "weight 1: the cross-encoder's logits as they are"
    assert list(np.argsort(-blend(logits, retrieval, 0.0))) == [0, 2, 1], "weight 0: retrieval's order"
    assert np.allclose(blend(logits, retrieval, 0.5), [0.5, 0.5, 0.5 * 0.5 + 0.5 * 0.5])  # both min-max-normalised
    assert list(np.argsort(-blend(logits, retrieval, 0.7), kind="stable")) == [1, 2, 0]
    assert np.array_equal(blend(np.array([2.0, 2.0]), np.array([1.0, 0.0]), 0.5), [1.0, 0.5]), "a flat list counts 1"


def chunk(doc_id: str, score: float) -> RetrievedChunk:
    return RetrievedChunk(f"{doc_id}-0", doc_id, doc_id, "text", "source.txt", score, 0, 4, "default")


def test_candidates_reorder_only_the_head_as_the_engine_serves_them() -> None:
    chunks = [chunk("a", 0.9), chunk("b", 0.5), chunk("c", 0.4), chunk("d", 0.1)]
    candidates = Candidates(chunks, np.array([-3.0, 5.0, 1.0], dtype=np.float32))  # the first 3 were reranked
    assert candidates.reordered(0.0) == chunks, "weight 0: the retrieval order"
    assert [c.doc_id for c in candidates.reordered(1.0)] == ["b", "c", "a", "d"], "the tail keeps its place"
    judged = EvalDataset("t", {"q": "question"}, {"q": {"b": 1}})
    assert ndcg_at_10(judged, {"q": candidates.reordered(1.0)})[0] == 1.0
    assert ndcg_at_10(judged, {"q": chunks}) == (0.6309, {"q": pytest.approx(0.63093, abs=1e-5)})


def test_the_served_reranker_follows_the_setting_then_the_record() -> None:
    auto_policy = RerankPolicy.parse(" Auto ")
    recorded = BuildRecord(reranker="models:/rag-reranker/2", rerank_weights='{"hybrid": 0.3, "dense": 0.5}')
    auto = served_reranker(recorded, auto_policy, 0.5, False)
    assert auto == ServedReranker("models:/rag-reranker/2", 0.5, (("dense", 0.5), ("hybrid", 0.3))), "the gate's modes"
    assert auto.mode_weights() == {"dense": 0.5, "hybrid": 0.3}
    forced = served_reranker(recorded, auto_policy, 0.7, True)
    assert forced is not None and forced.mode_weights() == {"dense": 0.7, "hybrid": 0.7}, "RAG_RERANK_WEIGHT wins"
    assert served_reranker(BuildRecord(), auto_policy, 0.5, False) is None, "a build nobody proved a reranker on"
    assert served_reranker(replace(recorded, rerank_weights="not json"), auto_policy, 0.5, False) is None
    assert served_reranker(recorded, RerankPolicy.parse("off"), 0.5, False) is None
    assert served_reranker(recorded, RerankPolicy.parse(""), 0.5, False) is None
    named = served_reranker(BuildRecord(), RerankPolicy.parse(" /models/mine "), 0.5, False)
    assert named == ServedReranker("/models/mine", 0.5) and named.mode_weights() is None, "named: every mode"
    assert Settings().rerank_policy == auto_policy and Settings(rerank_model="Off").rerank_policy == RerankPolicy()
    assert Settings(rerank_model="None").rerank_policy.named == "" and not RerankPolicy.parse("none").auto
    assert Settings(rerank_weight=0.4).rerank_weight_configured and not Settings().rerank_weight_configured


def test_the_reranker_gate_refuses_to_pick_its_weight_on_the_queries_it_is_judged_on() -> None:
    shared = EvalDataset("both", {"q1": "question"}, {"q1": {"d": 1}})
    with pytest.raises(ValueError, match="1 queries are in both the tuning and the evaluation set"):
        RerankerGate(None, None, None, None, shared, shared, "default", 30).verdict()  # type: ignore[arg-type]


def test_the_bundled_embedder_is_not_a_cross_encoder() -> None:
    assert not is_cross_encoder(bundled_model_dir())


@pytest.mark.parametrize(
    "reference, error, message",
    [
        ("{missing}", FileNotFoundError, r"RAG_RERANK_MODEL=.* is not a directory — train one with the `reranker_"),
        ("{bundled}", ValueError, r"RAG_RERANK_MODEL=.* is an embedding model, not a one-logit cross-encoder"),
        ("models:/rag-reranker/7", FileNotFoundError, r"RAG_RERANK_MODEL='models:/rag-reranker/7': could not fetch"),
    ],
)
def test_a_bad_rerank_model_stops_the_start(
    settings: Settings, tmp_path: Path, reference: str, error: type, message: str
) -> None:
    reference = reference.format(missing=tmp_path / "no-such-reranker", bundled=bundled_model_dir())
    bad = settings.model_copy(update={"rerank_model": reference})
    with pytest.raises(error, match=message):
        ServingState(bad)


def test_the_app_fails_its_start_up_naming_the_fix(settings: Settings, tmp_path: Path) -> None:
    bad = settings.model_copy(update={"rerank_model": str(tmp_path / "no-such-reranker")})
    app = create_app(bad)
    # TestClient runs the lifespan as uvicorn does before it listens: the start fails, naming the fix.
    with pytest.raises(FileNotFoundError, match=r"unset RAG_RERANK_MODEL to serve without reranking"), TestClient(app):
        pass


def test_a_promotion_names_the_reranker_the_replaced_build_served_and_the_new_one_does_not() -> None:
    recorded = BuildRecord(reranker="models:/rag-reranker/2", rerank_weights='{"dense": 0.2}')
    assert reranker_after_promotion(recorded, None) == ("models:/rag-reranker/2 in dense (weight 0.2)", "")
    text, rejudge = reranker_after_promotion(BuildRecord(), recorded, "rag_chunks_v1")
    assert rejudge == "models:/rag-reranker/2", "named, for rerank_after_promotion_sensor to judge on the new build"
    assert text.startswith("none yet: models:/rag-reranker/2 reranked dense on rag_chunks_v1")
    assert "`rag train-reranker --judge models:/rag-reranker/2`" in text
    assert reranker_after_promotion(BuildRecord(), BuildRecord(), "old") == (
        "none recorded — `rag train-reranker` trains one and judges it on this build",
        "",
    )
    unproven = BuildRecord(reranker="models:/rag-reranker/2", rerank_weights=None)
    assert reranker_after_promotion(BuildRecord(), unproven, "old")[1] == "", "it served no mode: nothing to re-judge"


def test_a_later_judgement_never_undoes_a_reranker_proven_since() -> None:
    other = BuildRecord(reranker="models:/rag-reranker/5", rerank_weights='{"hybrid": 0.3}')
    assert may_record_reranker(BuildRecord(), "models:/rag-reranker/2", replace_recorded=False)
    assert may_record_reranker(replace(other, reranker="models:/rag-reranker/2"), "models:/rag-reranker/2", False)
    assert not may_record_reranker(other, "models:/rag-reranker/2", replace_recorded=False)
    assert may_record_reranker(other, "models:/rag-reranker/6", replace_recorded=True), "a fresh training replaces"


def test_the_held_out_questions_travel_with_the_model(tmp_path: Path) -> None:
    dev = [example("q2", "d1"), example("q1", "d1"), example("q2", "d3"), TrainingExample("from feedback", "d9")]
    held_out = HeldOutQuestions.of("scifact/train", dev)
    assert held_out.query_ids == ("q1", "q2"), "whole questions, once each; feedback pairs have no judged id"
    assert HeldOutQuestions.load(tmp_path) is None, "a reranker trained before they were kept"
    held_out.save(tmp_path)
    assert HeldOutQuestions.load(tmp_path) == held_out
