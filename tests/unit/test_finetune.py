"""Fine-tuning on real data: pairs from the vendored SciFact qrels, real mining, a few real training steps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rag_core.embedding import Embedder, model_fingerprint
from rag_core.finetune import (
    FinetuneConfig,
    TrainingExample,
    best_epoch,
    bm25_scores,
    fill_missing_negatives,
    finetune,
    load_corpus,
    mine_hard_negatives,
    pairs_from_feedback,
    pairs_from_qrels,
)
from rag_core.settings import bundled_model_dir

SCIFACT = Path(__file__).parents[2] / "evals" / "datasets" / "scifact"


@pytest.fixture(scope="module")
def corpus() -> dict[str, str]:
    return load_corpus(SCIFACT)


@pytest.fixture(scope="module")
def examples() -> list[TrainingExample]:
    return pairs_from_qrels(SCIFACT, "train", limit=16)


def small_corpus(corpus: dict[str, str], examples: list[TrainingExample], size: int = 300) -> dict[str, str]:
    """The positives plus the first `size` abstracts: enough distractors to mine from, cheap to embed."""
    wanted = {example.positive_id for example in examples} | set(list(corpus)[:size])
    return {doc_id: text for doc_id, text in corpus.items() if doc_id in wanted}


def test_pairs_from_qrels_embed_the_indexed_text(corpus: dict[str, str], examples: list[TrainingExample]) -> None:
    assert len(examples) == 16
    for example in examples:
        assert example.origin == "qrels" and example.negative is None
        assert example.query and example.query_id
        assert example.positive == corpus[example.positive_id]
        title = example.positive.split("\n", 1)[0]
        assert title and example.positive.startswith(f"{title}\n")
    everything = pairs_from_qrels(SCIFACT, "train")
    assert len(everything) > len({e.query_id for e in everything}) >= 800  # some claims cite several abstracts


def test_pairs_from_feedback_skips_unknown_and_duplicate_chunks() -> None:
    chunk_texts = {"d1#0:aa": "Title\nfirst", "d2#0:bb": "Title\nsecond"}
    examples = pairs_from_feedback(
        [("what is first?", ["d1#0:aa", "d1#0:aa", "gone#0:cc"]), ("second?", ["d2#0:bb"]), ("none?", [])],
        chunk_texts,
    )
    assert [(e.query, e.positive, e.origin) for e in examples] == [
        ("what is first?", "Title\nfirst", "feedback"),
        ("second?", "Title\nsecond", "feedback"),
    ]


def test_bm25_ranks_the_matching_document_first() -> None:
    scores = bm25_scores(["vitamin d deficiency"], ["cats and dogs", "vitamin D deficiency in adults", "vitamins"])
    assert scores.shape == (1, 3) and int(np.argmax(scores)) == 1


def test_bm25_mining_never_returns_a_positive(corpus: dict[str, str]) -> None:
    examples = pairs_from_qrels(SCIFACT, "train", limit=80)
    mined = mine_hard_negatives(examples, small_corpus(corpus, examples), method="bm25", skip_top=0)
    positives: dict[str, set[str]] = {}
    for example in examples:
        positives.setdefault(example.query_id, set()).add(example.positive)
    assert len(mined) == len(examples)
    assert all(m.negative is not None for m in mined)
    for example in mined:
        assert example.negative not in positives[example.query_id]
    # deterministic for a seed
    again = mine_hard_negatives(examples, small_corpus(corpus, examples), method="bm25", skip_top=0)
    assert [m.negative for m in again] == [m.negative for m in mined]


def test_one_example_left_without_a_negative_does_not_turn_hard_negatives_off() -> None:
    """Mining found a negative for all but one example (its ceiling hid every candidate): that one borrows
    another question's positive, and the rest keep theirs. Before, one gap silently trained in-batch only."""
    examples = [
        TrainingExample("q1", "p1", "n1", query_id="1"),
        TrainingExample("q2", "p2", None, query_id="2"),
        TrainingExample("q3", "p3", "n3", query_id="3"),
    ]
    filled = fill_missing_negatives(examples)
    assert [e.negative for e in filled] == ["n1", "p3", "n3"]
    assert fill_missing_negatives([TrainingExample("q", "p")]) == [TrainingExample("q", "p")]  # nothing to borrow


def test_mining_falls_back_past_the_ceiling_rather_than_leaving_an_example_without_a_negative() -> None:
    corpus = {"pos": "vitamin d deficiency in adults", "near": "vitamin d deficiency", "far": "cats and dogs"}
    example = TrainingExample("vitamin d deficiency", corpus["pos"], query_id="q", positive_id="pos")
    # skip_top=2 passes over both candidates the window could hold: the fallback still finds one.
    [mined] = mine_hard_negatives([example], corpus, method="bm25", skip_top=2, depth=1)
    assert mined.negative in {corpus["near"], corpus["far"]}


def test_the_refit_trains_for_the_epoch_the_dev_run_kept() -> None:
    history = [{"epoch": 0.0}, {"epoch": 1.0, "saved": 1.0}, {"epoch": 2.0, "saved": 1.0}, {"epoch": 3.0}]
    assert best_epoch(history, default=3) == 2
    assert best_epoch([{"epoch": 1.0}, {"epoch": 2.0}], default=2) == 2  # keep_best off: the configured epochs


@pytest.mark.slow
def test_finetune_few_steps_changes_the_model(
    tmp_path: Path, corpus: dict[str, str], examples: list[TrainingExample]
) -> None:
    base = bundled_model_dir()
    mined = mine_hard_negatives(examples, small_corpus(corpus, examples, 100), base, method="hybrid")
    positives = {(e.query_id, e.positive) for e in examples}
    assert all(m.negative and (m.query_id, m.negative) not in positives for m in mined)

    dev_ids = [e.positive_id for e in examples[:4]]
    dev = (
        {e.query_id: e.query for e in examples[:4]},
        {d: corpus[d] for d in dev_ids},
        {e.query_id: {e.positive_id: 1} for e in examples[:4]},
    )
    epochs: list[tuple[int, dict[str, float]]] = []
    # The dev queries' own pairs are held out of the dev run, which picks the epochs; the refit then trains on all.
    held_out = [m for m in mined if m.query_id in dev[0]]
    training = [m for m in mined if m.query_id not in dev[0]]
    result = finetune(
        base,
        training,
        tmp_path / "model",
        FinetuneConfig.small(),
        dev=dev,
        on_epoch=lambda e, m: epochs.append((e, m)),
        held_out=held_out,
    )
    assert result.examples == 16 and result.refit_epochs == 1 and result.seconds > 0
    assert [epoch for epoch, _ in epochs] == [0, 1, 1] and "dev_ndcg@10" in epochs[1][1]
    assert "train_loss" in epochs[1][1] and "refit_train_loss" in epochs[-1][1]
    assert not any(name.startswith("dev_") for name in epochs[-1][1]), "the refit has no held-out queries left"
    assert [m.get("refit", 0.0) for m in result.history] == [0.0, 0.0, 1.0]
    assert (result.model_dir / "model.safetensors").is_file()

    tuned, original = Embedder(result.model_dir), Embedder(base)
    assert tuned.version != original.version and model_fingerprint(result.model_dir) in tuned.version
    texts = [examples[0].query, examples[0].positive]
    tuned_vectors, base_vectors = tuned.encode(texts), original.encode(texts)
    assert tuned_vectors.shape == base_vectors.shape == (2, 384)
    assert not np.allclose(tuned_vectors, base_vectors, atol=1e-4)
    assert np.allclose(np.linalg.norm(tuned_vectors, axis=1), 1.0, atol=1e-4)
