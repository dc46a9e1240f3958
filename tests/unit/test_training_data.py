"""Choices made once for a fine-tuning run or a candidate build: the dev split, the training preset, and the
candidate's model and chunking resolved against the served build."""

from __future__ import annotations

import pytest

from rag_core import training_data
from rag_core.chunking import ChunkingConfig
from rag_core.finetune import FinetuneConfig, TrainingExample
from rag_core.generation import LLMConfig
from rag_core.promotion import BuildSpec, candidate_build
from rag_core.training_data import TrainingSet, add_served_examples, dev_split


def _examples(queries: int) -> list[TrainingExample]:
    """Two judged documents per query, so a held-out query takes both of its pairs with it."""
    return [
        TrainingExample(f"question {q}", f"passage {q}-{d}", query_id=f"q{q}", positive_id=f"d{q}-{d}")
        for q in range(queries)
        for d in range(2)
    ]


def test_the_dev_split_holds_out_whole_queries_over_a_bounded_corpus() -> None:
    examples = _examples(20)
    corpus = {example.positive_id: example.positive for example in examples} | {f"x{i}": "other" for i in range(50)}
    train, dev = dev_split(examples, corpus, dev_fraction=0.2, dev_corpus_size=12)
    assert dev is not None
    queries, dev_corpus, qrels = dev
    assert len(queries) == 4 and set(qrels) == set(queries)
    assert not {example.query_id for example in train} & set(queries)
    assert len(train) + 2 * len(queries) == len(examples)
    assert {doc for judged in qrels.values() for doc in judged} <= set(dev_corpus) and len(dev_corpus) == 12
    assert dev_split(examples, corpus, 0.2, 12) == (train, dev)  # seeded: the same split every run


def test_too_few_queries_hold_nothing_out() -> None:
    examples = _examples(9)
    assert dev_split(examples, {}, dev_fraction=0.4, dev_corpus_size=10) == (examples, None)


class ServedChunks:
    """The two store reads the served examples need, over a fixed served collection."""

    def __init__(self, served: str | None) -> None:
        self.served = served

    def alias_target(self) -> str | None:
        return self.served

    def sample_texts(self, collection: str, limit: int) -> dict[str, str]:
        return {f"{collection}#{i}": f"Title\npassage {i}" for i in range(limit)}


def test_synthetic_questions_join_the_set_and_a_non_generative_llm_is_noted(monkeypatch) -> None:
    monkeypatch.setattr(training_data, "synthetic_questions", lambda passages, llm: ["What is passage 0?", ""])
    training = TrainingSet([], {}, None, {"qrels": 0, "feedback": 0, "synthetic": 0})
    add_served_examples(training, ServedChunks("c1"), "", 2, LLMConfig("openai/gpt-4o-mini"))
    assert [(e.query, e.origin, e.positive_id) for e in training.examples] == [
        ("What is passage 0?", "synthetic", "c1#0")  # the chunk without a question is left out
    ]
    assert training.origins["synthetic"] == 1 and not training.notes
    monkeypatch.undo()  # the real writer: a local answerer writes no questions
    add_served_examples(training, ServedChunks("c1"), "", 2, LLMConfig("extractive/best-sentences"))
    assert training.notes == ["synthetic questions skipped: extractive/best-sentences is not a generative model"]
    nothing_served = TrainingSet([], {}, None, {"synthetic": 0})
    add_served_examples(nothing_served, ServedChunks(None), "sqlite:///unused.db", 2, LLMConfig())
    assert nothing_served.examples == [] and nothing_served.notes == []


def test_a_training_preset_takes_only_the_overrides_it_is_given() -> None:
    assert FinetuneConfig.preset("default") == FinetuneConfig()
    small = FinetuneConfig.preset("small", epochs=2)
    assert small.epochs == 2 and small.batch_size == FinetuneConfig.small().batch_size
    assert FinetuneConfig.preset("default", batch_size=8).batch_size == 8


def test_a_candidate_takes_what_it_asks_for_and_the_rest_from_the_served_build() -> None:
    served = BuildSpec("models:/rag-embedder/2", 128, 16)
    assert candidate_build(served, "bundled:x") == ("models:/rag-embedder/2", ChunkingConfig(128, 16))
    assert candidate_build(served, "bundled:x", "models:/rag-embedder/3", 0, 0) == (
        "models:/rag-embedder/3",
        ChunkingConfig(128, 0),
    )
    assert candidate_build(None, "bundled:x", chunk_max_tokens=64) == ("bundled:x", ChunkingConfig(64, 32))
    # Document entries follow the served build unless asked for: a build from before them keeps none.
    before_entries = BuildSpec("bundled:x", 256, 32, document_entries=False)
    assert not candidate_build(before_entries, "bundled:x")[1].document_entries
    assert candidate_build(before_entries, "bundled:x", document_entries=True)[1].document_entries
    # So does the BM25 analyzer: a build from before stemming keeps its words as written unless asked.
    before_stems = BuildSpec("bundled:x", 256, 32, bm25_analyzer="standard")
    assert candidate_build(before_stems, "bundled:x")[1].bm25_analyzer == "standard"
    assert candidate_build(before_stems, "bundled:x", bm25_analyzer="english")[1].bm25_analyzer == "english"
    assert candidate_build(None, "bundled:x")[1].describe() == "tokens256-overlap32-docs-stem"


def test_a_candidate_whose_overlap_is_not_below_its_chunk_size_is_refused_with_the_fix() -> None:
    with pytest.raises(ValueError, match="overlap 32 must be smaller than the chunk size 32 — ask for a smaller"):
        candidate_build(BuildSpec("m", 256, 32), "bundled:x", chunk_max_tokens=32)
