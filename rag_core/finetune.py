"""Fine-tuning the embedding model on (question, relevant passage) pairs, with mined hard negatives.

Pairs come from a BEIR-layout dataset's qrels (`pairs_from_qrels`) or from users' relevance feedback
(`pairs_from_feedback`). `mine_hard_negatives` adds one hard negative per pair: a passage that BM25 and/or
the base model rank high for the question but that is not one of its known positives — skipping the very
top ranks, which in sparsely judged data are often unlabelled positives, and anything the base model scores
almost as high as the positive. `finetune` trains a sentence-transformers model with
MultipleNegativesRankingLoss (in-batch negatives plus the hard negative) and saves a model directory that
`rag_core.embedding.Embedder` loads. Everything runs offline on CPU.
"""

from __future__ import annotations

import logging
import math
import os
import random
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

import numpy as np

from rag_core.chunking import search_text
from rag_core.documents import normalise_text
from rag_core.evaluation import EvalDataset, _open_jsonl, ir_metrics
from rag_core.ids import content_hash

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

log = logging.getLogger(__name__)

EpochCallback = Callable[[int, dict[str, float]], None]
DevSet = tuple[dict[str, str], dict[str, str], dict[str, dict[str, int]]]  # (queries, corpus, qrels)


@dataclass
class TrainingExample:
    query: str
    positive: str
    negative: str | None = None
    origin: str = "qrels"
    query_id: str = ""  # when known: lets mining skip every positive of the same question
    positive_id: str = ""


# --------------------------------------------------------------------------- pairs


def load_corpus(dataset_dir: Path) -> dict[str, str]:
    """{doc id: the text our index embeds for it (title + "\\n" + text, normalised as the parser does)}."""
    return {
        str(record["_id"]): search_text(
            normalise_text(str(record.get("title") or "")), normalise_text(str(record.get("text") or ""))
        )
        for record in _open_jsonl(dataset_dir, "corpus")
    }


def pairs_from_qrels(dataset_dir: Path, split: str = "train", limit: int | None = None) -> list[TrainingExample]:
    """One example per judged-relevant (query, document) of qrels/<split>.tsv, in file order."""
    dataset = EvalDataset.load(dataset_dir, split)
    corpus = load_corpus(dataset_dir)
    examples = [
        TrainingExample(dataset.queries[query_id], corpus[doc_id], query_id=query_id, positive_id=doc_id)
        for query_id, judged in dataset.qrels.items()
        for doc_id in judged
        if doc_id in corpus
    ]
    return examples[:limit] if limit is not None else examples


def pairs_from_feedback(relevant: list[tuple[str, list[str]]], chunk_texts: dict[str, str]) -> list[TrainingExample]:
    """(question, chunk ids users judged relevant) → examples; chunks no longer indexed are skipped."""
    return [
        TrainingExample(question, chunk_texts[chunk], origin="feedback", query_id=question, positive_id=chunk)
        for question, chunks in relevant
        for chunk in dict.fromkeys(chunks)
        if chunk in chunk_texts and question.strip()
    ]


# --------------------------------------------------------------------------- hard negatives

_TOKEN = re.compile(r"\w+", re.UNICODE)


def bm25_scores(queries: Sequence[str], documents: Sequence[str], k1: float = 0.9, b: float = 0.4) -> np.ndarray:
    """(queries × documents) Okapi BM25 scores, lowercase word tokens (the Pyserini defaults k1=0.9, b=0.4)."""
    from sklearn.feature_extraction.text import CountVectorizer

    vectorizer = CountVectorizer(token_pattern=_TOKEN.pattern, stop_words="english", dtype=np.float32)
    counts = vectorizer.fit_transform(documents).tocsr()
    lengths = np.asarray(counts.sum(axis=1)).ravel()
    frequency = np.bincount(counts.indices, minlength=counts.shape[1])
    idf = np.log(1 + (len(documents) - frequency + 0.5) / (frequency + 0.5)).astype(np.float32)
    norm = k1 * (1 - b + b * lengths / max(float(lengths.mean()), 1.0))
    weights = counts.copy()
    rows = np.repeat(np.arange(counts.shape[0]), np.diff(counts.indptr))
    weights.data = counts.data * (k1 + 1) / (counts.data + norm[rows]) * idf[counts.indices]
    query_terms = vectorizer.transform(queries)
    query_terms.data[:] = 1.0
    return np.asarray((query_terms @ weights.T).todense(), dtype=np.float32)


def dense_scores(queries: Sequence[str], documents: Sequence[str], embedder_dir: Path, cache=None) -> np.ndarray:
    """(queries × documents) cosine similarities under the model at `embedder_dir` (vectors cached if given)."""
    from rag_core.embedding import Embedder, embed_with_cache

    embedder = Embedder(embedder_dir)
    if cache is None:
        doc_vectors = embedder.encode(list(documents), show_progress=len(documents) > 1000)
        query_vectors = embedder.encode(list(queries))
    else:
        doc_vectors, _ = embed_with_cache(embedder, cache, documents, [content_hash(t) for t in documents], True)
        query_vectors, _ = embed_with_cache(embedder, cache, queries, [content_hash("query:" + q) for q in queries])
    return query_vectors @ doc_vectors.T


def _ranks(scores: np.ndarray) -> np.ndarray:
    """Rank (0 = best) of every document per query."""
    order = np.argsort(-scores, axis=1, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(scores.shape[1])[None, :].repeat(scores.shape[0], 0), axis=1)
    return ranks


def _candidate_order(bm25: np.ndarray | None, dense: np.ndarray | None, rrf_k: int = 60) -> np.ndarray:
    """Documents per query, best first, by BM25, dense, or their reciprocal-rank fusion."""
    if bm25 is not None and dense is not None:
        fused = 1.0 / (rrf_k + _ranks(bm25)) + 1.0 / (rrf_k + _ranks(dense))
        return np.argsort(-fused, axis=1, kind="stable")
    return np.argsort(-(bm25 if bm25 is not None else dense), axis=1, kind="stable")


def mine_hard_negatives(
    examples: list[TrainingExample],
    corpus: dict[str, str],
    embedder_dir: Path | None = None,
    *,
    method: str = "hybrid",
    skip_top: int = 3,
    depth: int = 30,
    max_relative_score: float = 0.95,
    seed: int = 13,
    cache=None,
) -> list[TrainingExample]:
    """Copies of `examples` with `negative` set to a hard negative from `corpus` (id → text).

    Candidates are ranked by BM25, the base model at `embedder_dir` ("dense"), or both fused ("hybrid";
    without `embedder_dir` only BM25 is used). Every known positive of the question is skipped (by id, and
    by text), then the first `skip_top` remaining ranks (likely unlabelled positives), and, when dense scores
    exist, any candidate scoring above `max_relative_score` × the positive's score. One negative is drawn at
    random from the remaining candidates within the top `depth`; when the ceiling leaves none there, from
    any remaining candidate; an example with no non-positive passage at all keeps None.
    """
    if not examples:
        return []
    doc_ids = list(corpus)
    texts = [corpus[doc_id] for doc_id in doc_ids]
    by_text = {text: index for index, text in enumerate(texts)}
    by_id = {doc_id: index for index, doc_id in enumerate(doc_ids)}
    questions = list(dict.fromkeys(example.query for example in examples))
    row_of = {question: row for row, question in enumerate(questions)}
    use_dense = embedder_dir is not None and method in ("dense", "hybrid")
    bm25 = bm25_scores(questions, texts) if method in ("bm25", "hybrid") or not use_dense else None
    dense = dense_scores(questions, texts, embedder_dir, cache) if use_dense else None
    order = _candidate_order(bm25, dense)[:, : depth + skip_top + 64]
    positives: dict[str, set[int]] = {}
    for example in examples:
        key = example.query_id or example.query
        found = by_id.get(example.positive_id, by_text.get(example.positive))
        if found is not None:
            positives.setdefault(key, set()).add(found)
    rng = random.Random(seed)
    mined = []
    for example in examples:
        row = row_of[example.query]
        known = positives.get(example.query_id or example.query, set())
        ceiling = math.inf
        if dense is not None and known:
            ceiling = max_relative_score * max(float(dense[row, index]) for index in known)
        remaining = [int(index) for index in order[row] if int(index) not in known and texts[index] != example.positive]
        window = [
            index
            for index in remaining[skip_top : skip_top + depth]
            if dense is None or float(dense[row, index]) <= ceiling
        ]
        fallback = window or remaining[skip_top:] or remaining
        negative = texts[rng.choice(fallback)] if fallback else None
        mined.append(
            TrainingExample(
                example.query, example.positive, negative, example.origin, example.query_id, example.positive_id
            )
        )
    return mined


# --------------------------------------------------------------------------- training


@dataclass
class FinetuneConfig:
    # At most this many: the dev run keeps its best epoch and the refit trains that many. SciFact, 120 held-out
    # train claims, dev nDCG@10 over a 5-epoch schedule: 0.705 base → 0.739, 0.761, 0.767, 0.788, 0.785 (best 4);
    # a 3-epoch schedule had stopped at 0.757.
    epochs: int = 5
    batch_size: int = 32
    learning_rate: float = 3e-5
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    seed: int = 13
    max_seq_length: int = 256  # the index embeds ≤ 256-token chunks
    scale: float = 20.0  # MNRL's inverse temperature
    use_hard_negatives: bool = True
    logging_steps: int = 10
    dev_top_k: int = 10
    keep_best: bool = True  # with a dev set: keep the epoch with the best dev nDCG@10, not the last
    refit: bool = True  # with held-out pairs: train again on everything for the epochs the dev run picked

    @classmethod
    def small(cls) -> FinetuneConfig:
        """A seconds-long configuration for CI: one short epoch, short sequences."""
        return cls(epochs=1, batch_size=4, max_seq_length=64, logging_steps=1, learning_rate=5e-5)

    @classmethod
    def preset(cls, name: str, epochs: int = 0, batch_size: int = 0) -> FinetuneConfig:
        """`small` (seconds, for CI) or the tuned default, with `epochs` / `batch_size` when not 0."""
        config = cls.small() if name == "small" else cls()
        if epochs:
            config = replace(config, epochs=epochs)
        if batch_size:
            config = replace(config, batch_size=batch_size)
        return config


@dataclass
class FinetuneResult:
    model_dir: Path
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)
    examples: int = 0
    refit_epochs: int = 0  # epochs of the final training on every example (0: no refit)


def evaluate_dev(model, dev: DevSet, top_k: int = 10) -> dict[str, float]:
    """nDCG@10, recall@k and MRR@10 of `model` on (queries, corpus, qrels) by exact cosine search."""
    queries, corpus, qrels = dev
    query_ids = [query_id for query_id in queries if query_id in qrels]
    doc_ids = list(corpus)
    doc_vectors = model.encode([corpus[d] for d in doc_ids], normalize_embeddings=True, convert_to_numpy=True)
    query_vectors = model.encode([queries[q] for q in query_ids], normalize_embeddings=True, convert_to_numpy=True)
    scores = query_vectors @ doc_vectors.T
    depth = min(100, len(doc_ids))
    top = np.argsort(-scores, axis=1)[:, :depth]
    run = {
        query_id: {doc_ids[index]: float(scores[row, index]) for index in top[row]}
        for row, query_id in enumerate(query_ids)
    }
    metrics = ("ndcg@10", f"recall@{top_k}", "mrr@10")
    means, _ = ir_metrics({q: qrels[q] for q in query_ids}, run, metrics)
    return {f"dev_{name}": value for name, value in means.items()}


def fill_missing_negatives(examples: Sequence[TrainingExample]) -> list[TrainingExample]:
    """Examples that all have a negative: one mining left without takes the positive of the next example of
    another question (what in-batch training would show it), so one gap never turns hard negatives off for all."""
    filled = list(examples)
    for position, example in enumerate(examples):
        if example.negative:
            continue
        others = (examples[(position + step) % len(examples)] for step in range(1, len(examples)))
        other = next((o for o in others if o.query != example.query and o.positive != example.positive), None)
        if other is not None:
            filled[position] = replace(example, negative=other.positive)
    return filled


def _training_dataset(examples: Sequence[TrainingExample], with_negatives: bool):
    from datasets import Dataset

    columns: dict[str, list[str]] = {
        "anchor": [example.query for example in examples],
        "positive": [example.positive for example in examples],
    }
    if with_negatives:
        columns["negative"] = [example.negative or "" for example in examples]
    return Dataset.from_dict(columns)


class TrainingSchedule(Protocol):
    epochs: int
    batch_size: int
    learning_rate: float
    warmup_ratio: float
    weight_decay: float
    seed: int
    logging_steps: int


def cpu_training_arguments(config: TrainingSchedule, scratch: str) -> dict[str, object]:
    """The Trainer arguments the embedder and the reranker share: this schedule, on the CPU, no checkpoints
    (the best epoch is saved by `epoch_reporter`), no in-trainer evaluation, no outside reporting."""
    return {
        "output_dir": scratch,
        "num_train_epochs": config.epochs,
        "per_device_train_batch_size": config.batch_size,
        "learning_rate": config.learning_rate,
        "warmup_steps": config.warmup_ratio,  # a float below 1 is a ratio of the steps in Transformers 5
        "weight_decay": config.weight_decay,
        "seed": config.seed,
        "data_seed": config.seed,
        "save_strategy": "no",
        "eval_strategy": "no",
        "logging_steps": config.logging_steps,
        "report_to": "none",
        "use_cpu": True,
        "dataloader_num_workers": 0,
    }


def epoch_reporter(
    evaluate: Callable[[], dict[str, float]] | None,
    save: Callable[[], None],
    keep_best: bool,
    history: list[dict[str, float]],
    on_epoch: EpochCallback | None,
):
    """(a Trainer callback, `report(epoch, loss)`): after every epoch, the mean training loss and `evaluate()`'s
    dev metrics go to `history` and `on_epoch`. With `keep_best`, `save()` runs whenever dev nDCG@10 beats
    every earlier epoch (that epoch's metrics carry `saved`: 1.0). Shared by the embedder and the reranker."""
    from transformers import TrainerCallback

    started = time.perf_counter()

    def report(epoch: int, loss: float | None) -> None:
        metrics: dict[str, float] = {"epoch": float(epoch), "seconds": round(time.perf_counter() - started, 1)}
        if loss is not None:
            metrics["train_loss"] = round(loss, 4)
        if evaluate is not None:
            metrics.update(evaluate())
            best = max((m["dev_ndcg@10"] for m in history if m["epoch"] >= 1), default=-1.0)
            if keep_best and epoch >= 1 and metrics["dev_ndcg@10"] > best:
                save()
                metrics["saved"] = 1.0
        history.append(metrics)
        log.info("epoch %s: %s", epoch, metrics)
        if on_epoch is not None:
            on_epoch(epoch, metrics)

    class EpochReporter(TrainerCallback):
        def on_epoch_end(self, args, state, control, **kwargs):
            losses = [entry["loss"] for entry in state.log_history if "loss" in entry]
            epoch = round(state.epoch or 0)
            recent = losses[-max(1, len(losses) // max(epoch, 1)) :] if losses else []
            report(epoch, float(np.mean(recent)) if recent else None)
            return control

    return EpochReporter(), report


def _save(model, output_dir: Path) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save(str(output_dir), safe_serialization=True)
    log.info("saved the model to %s", output_dir)


def _train_embedder(
    base_model_dir: Path,
    examples: list[TrainingExample],
    output_dir: Path,
    config: FinetuneConfig,
    dev: DevSet | None,
    on_epoch: EpochCallback | None,
) -> list[dict[str, float]]:
    """One training from `base_model_dir`, saved to `output_dir` (the best dev epoch with `keep_best`, else the
    last); returns the per-epoch history."""
    import tempfile

    import torch
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer
    from sentence_transformers.base.sampler import BatchSamplers
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from sentence_transformers.sentence_transformer.training_args import SentenceTransformerTrainingArguments

    torch.manual_seed(config.seed)
    model = SentenceTransformer(str(base_model_dir), device="cpu", local_files_only=True)
    model.max_seq_length = config.max_seq_length
    if config.use_hard_negatives and any(example.negative for example in examples):
        examples = fill_missing_negatives(examples)
    with_negatives = config.use_hard_negatives and all(example.negative for example in examples)
    history: list[dict[str, float]] = []
    reporter, report = epoch_reporter(
        (lambda: evaluate_dev(model, dev, config.dev_top_k)) if dev is not None else None,
        lambda: _save(model, output_dir),
        config.keep_best,
        history,
        on_epoch,
    )
    if dev is not None:
        report(0, None)
    with tempfile.TemporaryDirectory(prefix="finetune-") as scratch:
        arguments = SentenceTransformerTrainingArguments(
            **cpu_training_arguments(config, scratch), batch_sampler=BatchSamplers.NO_DUPLICATES, disable_tqdm=False
        )
        trainer = SentenceTransformerTrainer(
            model=model,
            args=arguments,
            train_dataset=_training_dataset(examples, with_negatives),
            loss=MultipleNegativesRankingLoss(model, scale=config.scale),
            callbacks=[reporter],
        )
        trainer.train()
    if not any(metrics.get("saved") for metrics in history):
        _save(model, output_dir)
    return history


def best_epoch(history: Sequence[dict[str, float]], default: int) -> int:
    """The epoch `keep_best` saved last (the best dev nDCG@10), or `default` when none was."""
    saved = [int(metrics["epoch"]) for metrics in history if metrics.get("saved")]
    return saved[-1] if saved else default


def finetune(
    base_model_dir: Path,
    examples: list[TrainingExample],
    output_dir: Path,
    config: FinetuneConfig,
    dev: DevSet | None = None,
    on_epoch: EpochCallback | None = None,
    held_out: Sequence[TrainingExample] = (),
) -> FinetuneResult:
    """Train `base_model_dir` on `examples` with MultipleNegativesRankingLoss; save to `output_dir`.

    Hard negatives (with `config.use_hard_negatives`, when mining found any; `fill_missing_negatives` fills
    the gaps) join the in-batch negatives. Batches never hold the same text twice, so a shared positive is
    never a false negative.
    `on_epoch(epoch, metrics)` gets the mean training loss and, given `dev`, nDCG@10 on it — also once
    before training as epoch 0. With `dev` and `config.keep_best`, the saved model is the epoch with the best
    dev nDCG@10 (its metrics carry `saved`: 1.0); otherwise the last.

    With `config.refit` and `held_out` (the pairs of the dev queries), that first training only picks the
    number of epochs: the saved model is then trained again from `base_model_dir` on `examples` + `held_out`
    for that many epochs, so no judged query is left unused. Its epochs report as `refit_*` metrics.
    """
    import tempfile

    if not examples:
        raise ValueError("no training examples")
    started = time.perf_counter()
    refit = config.refit and dev is not None and bool(held_out)
    if not refit:
        history = _train_embedder(base_model_dir, examples, output_dir, config, dev, on_epoch)
        return FinetuneResult(output_dir, time.perf_counter() - started, history, len(examples))
    with tempfile.TemporaryDirectory(prefix="finetune-dev-") as dev_model:
        history = _train_embedder(base_model_dir, examples, Path(dev_model), config, dev, on_epoch)
    epochs = best_epoch(history, config.epochs)

    def on_refit_epoch(epoch: int, metrics: dict[str, float]) -> None:
        if on_epoch is not None:
            on_epoch(epoch, {f"refit_{name}": value for name, value in metrics.items() if name != "epoch"})

    everything = [*examples, *held_out]
    refit_history = _train_embedder(
        base_model_dir, everything, output_dir, replace(config, epochs=epochs), None, on_refit_epoch
    )
    history += [{"refit": 1.0, **metrics} for metrics in refit_history]
    return FinetuneResult(output_dir, time.perf_counter() - started, history, len(everything), epochs)
