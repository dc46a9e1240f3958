"""Reranking: a cross-encoder reads the question together with each retrieved chunk and reorders the candidates.

No pretrained cross-encoder can be downloaded here, so `train_reranker` makes one from the bundled MiniLM
weights (a BERT encoder) with a fresh one-logit head, and trains it with binary cross-entropy on
(question, relevant passage) = 1 and (question, hard negative) = 0 pairs — the pairs and the mining of
`rag_core.finetune` — plus, per question, a passage relevant to another question (a cheap in-batch-style
negative). The saved directory is a sentence-transformers `CrossEncoder`; `Reranker` serves it:
construct, `warm_up()`, `run(query, chunks)`. It only reorders the chunks it is given.
"""

from __future__ import annotations

import json
import logging
import random
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from rag_core.chunking import search_text
from rag_core.embedding import model_fingerprint
from rag_core.evaluation import ir_metrics
from rag_core.finetune import (
    EpochCallback,
    TrainingExample,
    bm25_scores,
    cpu_training_arguments,
    epoch_reporter,
    mine_hard_negatives,
)
from rag_core.query import DEFAULT_RERANK_WEIGHT
from rag_core.retrieval import RetrievedChunk

if TYPE_CHECKING:
    from rag_core.embedding import EmbeddingCache
    from rag_core.models import ModelResolver

log = logging.getLogger(__name__)

# (queries, {query id: {doc id: text}} in first-stage order, qrels): what a reranker is scored on per epoch
RerankDevSet = tuple[dict[str, str], dict[str, dict[str, str]], dict[str, dict[str, int]]]
TRAIN_HINT = (
    "train one with the `reranker_model` asset (Dagster, group models) or `evals/bench_rerank.py`, or unset "
    "RAG_RERANK_MODEL to serve without reranking"
)


# --------------------------------------------------------------------------- the component


def is_cross_encoder(model_dir: Path) -> bool:
    """A saved sequence-classification model with one logit (what `train_reranker` writes)."""
    config_path = model_dir / "config.json"
    if not config_path.is_file():
        return False
    config = json.loads(config_path.read_text())
    architectures = config.get("architectures") or [""]
    return architectures[0].endswith("ForSequenceClassification") and len(config.get("id2label") or {"0": ""}) == 1


def check_cross_encoder(model_dir: Path, reference: str = "", setting: str = "RAG_RERANK_MODEL") -> Path:
    """`model_dir` if it holds a one-logit cross-encoder; otherwise an error that says what it is and the fix."""
    named = f"{setting}={reference or str(model_dir)!r}"
    if not model_dir.is_dir():
        raise FileNotFoundError(f"{named}: {model_dir} is not a directory — {TRAIN_HINT}")
    if not is_cross_encoder(model_dir):
        what = "an embedding model" if (model_dir / "modules.json").is_file() else "not a saved cross-encoder"
        raise ValueError(
            f"{named}: {model_dir} is {what}, not a one-logit cross-encoder (config.json architectures "
            f"*ForSequenceClassification) — {TRAIN_HINT}"
        )
    return model_dir


def resolve_reranker(reference: str, resolver: ModelResolver, setting: str = "RAG_RERANK_MODEL") -> Path:
    """The local directory of a reranker reference: a directory, or an MLflow URI (`models:/rag-reranker/N`,
    `models:/rag-reranker@champion`, `runs:/…/model`) fetched once into the resolver's model cache. Errors name
    `setting`, where the reference came from."""
    from rag_core.models import is_registry_reference

    if not reference.strip():
        raise ValueError(f"{setting} is empty — {TRAIN_HINT}")
    if not is_registry_reference(reference):
        return check_cross_encoder(Path(reference).expanduser().resolve(), reference, setting)
    try:
        model_dir = resolver.model_dir(reference)
    except Exception as error:  # the resolver's message names MLflow; say which setting asked for it
        raise FileNotFoundError(f"{setting}={reference!r}: {error}") from error
    return check_cross_encoder(model_dir, reference, setting)


def _min_max(values: np.ndarray) -> np.ndarray:
    span = float(values.max() - values.min()) if len(values) else 0.0
    return (values - values.min()) / span if span > 0 else np.ones_like(values)


def blend(rerank_scores: np.ndarray, retrieval_scores: np.ndarray, weight: float) -> np.ndarray:
    """The score a reranked list is ordered by: `weight` × the cross-encoder's plus (1 − `weight`) × retrieval's,
    each min-max-normalised over the candidates (as hybrid fusion does); weight 1 is the cross-encoder alone."""
    if weight >= 1.0:
        return rerank_scores.astype(np.float32)
    return (weight * _min_max(rerank_scores) + (1.0 - weight) * _min_max(retrieval_scores)).astype(np.float32)


class Reranker:
    """Scores (question, chunk) pairs with a cross-encoder and reorders the chunks, best first.

    Construct (cheap: checks the directory), `warm_up()` (loads the model and runs it once), `run(query,
    chunks)`. Every chunk keeps every field; the score the list is ordered by is recorded as `rerank_score`:
    the cross-encoder's logit, or with `weight` < 1 its blend with the retrieval score (see `blend`).
    `modes` ({mode: weight}, what the reranker gate recorded on a build) limits it to the modes it proved a gain
    in, each at its own weight; None reranks every mode at `weight`."""

    def __init__(
        self,
        model_dir: Path,
        device: str = "cpu",
        batch_size: int = 32,
        max_length: int = 256,
        name: str = "",
        weight: float = DEFAULT_RERANK_WEIGHT,
        modes: Mapping[str, float] | None = None,
    ) -> None:
        for value in [weight, *(modes or {}).values()]:
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"RAG_RERANK_WEIGHT={value} must be within [0, 1] (1: the cross-encoder alone)")
        self.model_dir = check_cross_encoder(model_dir)
        self.weight = weight
        self.modes = dict(modes) if modes is not None else None
        self.device = device
        self.batch_size = batch_size
        self.max_length = max_length
        # What a result cache keys reranked results by: the weights, not the path they were loaded from.
        self.version = f"{name or model_dir.name}@{model_fingerprint(model_dir)}"
        # One forward pass at a time: a fast tokenizer shared by threads fails ("Already borrowed"), and on a
        # CPU concurrent passes only split the same cores.
        self._lock = threading.Lock()

    @classmethod
    def from_reference(
        cls,
        reference: str,
        resolver: ModelResolver,
        device: str = "cpu",
        weight: float = DEFAULT_RERANK_WEIGHT,
        modes: Mapping[str, float] | None = None,
    ) -> Reranker:
        """The reranker a reference names (see `resolve_reranker`), versioned as `rag-reranker-3@<hash>`."""
        name = resolver.display_name(reference)
        return cls(resolve_reranker(reference, resolver), device, name=name, weight=weight, modes=modes)

    def weight_for(self, mode: str) -> float | None:
        """The weight it reranks `mode` with, or None when it does not rerank that mode."""
        return self.weight if self.modes is None else self.modes.get(mode)

    @property
    def cache_key(self) -> str:
        """What reranked results are cached under: the weights it serves, and how it blends them."""
        blends = f"{self.weight:g}" if self.modes is None else json.dumps(self.modes, sort_keys=True)
        return f"{self.version}:{blends}"

    @cached_property
    def model(self):
        from sentence_transformers import CrossEncoder

        return CrossEncoder(str(self.model_dir), device=self.device, local_files_only=True, max_length=self.max_length)

    def warm_up(self) -> Reranker:
        """Load the model and score one pair now, so the first request pays for neither."""
        self.scores("warm-up", ["warm-up"])
        return self

    def scores(self, query: str, passages: Sequence[str]) -> np.ndarray:
        """One raw logit per passage (no sigmoid: saturated probabilities would tie)."""
        import torch

        if not passages:
            return np.zeros(0, dtype=np.float32)
        model = self.model
        with self._lock:
            scores = model.predict(
                [(query, passage) for passage in passages],
                batch_size=self.batch_size,
                activation_fn=torch.nn.Identity(),
                show_progress_bar=False,
            )
        return np.asarray(scores, dtype=np.float32)

    def run(self, query: str, chunks: Sequence[RetrievedChunk], weight: float | None = None) -> list[RetrievedChunk]:
        """`chunks` reordered (at `weight`, default `self.weight`), each with its `rerank_score`; ties keep
        retrieval order."""
        logits = self.scores(query, [search_text(chunk.title, chunk.text) for chunk in chunks])
        retrieval = np.array([chunk.score for chunk in chunks], dtype=np.float32)
        scores = blend(logits, retrieval, self.weight if weight is None else weight)
        order = sorted(range(len(chunks)), key=lambda index: (-float(scores[index]), index))
        return [replace(chunks[index], rerank_score=round(float(scores[index]), 6)) for index in order]


# --------------------------------------------------------------------------- training data


def mine_reranker_negatives(
    examples: list[TrainingExample],
    corpus: dict[str, str],
    embedder_dir: Path | None,
    per_pair: int,
    method: str = "hybrid",
    cache: EmbeddingCache | None = None,
) -> list[TrainingExample]:
    """Each example `per_pair` times, each copy with a hard negative from `mine_hard_negatives` under its own
    seed (drawn from the same window, so copies may repeat a negative; `reranker_pairs` drops repeats)."""
    mined: list[TrainingExample] = []
    for round_ in range(per_pair):
        mined += mine_hard_negatives(examples, corpus, embedder_dir, method=method, seed=13 + round_, cache=cache)
    return mined


def reranker_pairs(
    examples: Sequence[TrainingExample], random_negatives: int, seed: int = 13
) -> tuple[list[str], list[str], list[float]]:
    """(queries, passages, labels): every distinct positive as 1, every distinct mined negative as 0, and per
    question `random_negatives` passages that are relevant to other questions as 0."""
    positives: dict[str, set[str]] = {}
    for example in examples:
        positives.setdefault(example.query, set()).add(example.positive)
    seen: set[tuple[str, str]] = set()
    queries: list[str] = []
    passages: list[str] = []
    labels: list[float] = []

    def add(query: str, passage: str, label: float) -> None:
        if passage and (query, passage) not in seen:
            seen.add((query, passage))
            queries.append(query)
            passages.append(passage)
            labels.append(label)

    for example in examples:
        add(example.query, example.positive, 1.0)
        if example.negative and example.negative not in positives[example.query]:
            add(example.query, example.negative, 0.0)
    pool = sorted({passage for texts in positives.values() for passage in texts})
    rng = random.Random(seed)
    for query, own in positives.items():
        drawn = rng.sample(pool, min(len(pool), random_negatives + len(own)))  # enough to skip its own positives
        for passage in [passage for passage in drawn if passage not in own][:random_negatives]:
            add(query, passage, 0.0)
    return queries, passages, labels


def split_dev(
    examples: list[TrainingExample], fraction: float, seed: int = 7
) -> tuple[list[TrainingExample], list[TrainingExample]]:
    """(train, dev): whole questions held out (never pairs of a training question); none below 10 questions."""
    questions = sorted({example.query_id or example.query for example in examples})
    count = int(len(questions) * fraction) if len(questions) >= 10 else 0
    held = set(random.Random(seed).sample(questions, count))
    train = [example for example in examples if (example.query_id or example.query) not in held]
    dev = [example for example in examples if (example.query_id or example.query) in held]
    return train, dev


HELD_OUT_FILE = "rag_held_out_questions.json"


@dataclass(frozen=True)
class HeldOutQuestions:
    """The judged questions a reranker never trained on, saved in its model directory (so they travel with the
    model into MLflow and back): a later build picks the reranker's weight on them without training it again."""

    dataset: str  # "<dataset folder>/<split>", e.g. "scifact/train"
    query_ids: tuple[str, ...]

    @classmethod
    def of(cls, dataset: str, dev: Sequence[TrainingExample]) -> HeldOutQuestions:
        return cls(dataset, tuple(sorted({example.query_id for example in dev if example.query_id})))

    def save(self, model_dir: Path) -> Path:
        path = model_dir / HELD_OUT_FILE
        path.write_text(json.dumps({"dataset": self.dataset, "query_ids": list(self.query_ids)}, indent=1))
        return path

    @classmethod
    def load(cls, model_dir: Path) -> HeldOutQuestions | None:
        """The record, or None for a reranker trained before it was kept (or outside `reranker_model`)."""
        path = model_dir / HELD_OUT_FILE
        if not path.is_file():
            return None
        recorded = json.loads(path.read_text())
        return cls(str(recorded["dataset"]), tuple(str(query_id) for query_id in recorded["query_ids"]))


def rerank_dev_set(dev: Sequence[TrainingExample], corpus: dict[str, str], depth: int = 20) -> RerankDevSet | None:
    """The held-out questions with BM25's top `depth` documents of `corpus` as candidates: a reranker is
    scored on what a first stage hands it, positives it missed included (they count against both)."""
    if not dev:
        return None
    queries = {example.query_id or example.query: example.query for example in dev}
    qrels: dict[str, dict[str, int]] = {}
    for example in dev:
        qrels.setdefault(example.query_id or example.query, {})[example.positive_id or example.positive] = 1
    doc_ids = list(corpus)
    scores = bm25_scores(list(queries.values()), [corpus[doc_id] for doc_id in doc_ids])
    top = np.argsort(-scores, axis=1, kind="stable")[:, :depth]
    candidates = {
        query_id: {doc_ids[index]: corpus[doc_ids[index]] for index in top[row]} for row, query_id in enumerate(queries)
    }
    return queries, candidates, qrels


def evaluate_reranker(score, dev: RerankDevSet) -> dict[str, float]:
    """nDCG@10 and MRR@10 of reordering each dev question's candidates by `score(query, passages)`, next to
    the first stage's own order (`dev_first_stage_*`) on the same candidates."""
    queries, candidates, qrels = dev
    reranked: dict[str, dict[str, float]] = {}
    first_stage: dict[str, dict[str, float]] = {}
    for query_id, text in queries.items():
        ids = list(candidates[query_id])
        values = score(text, [candidates[query_id][doc_id] for doc_id in ids])
        reranked[query_id] = {doc_id: float(value) for doc_id, value in zip(ids, values, strict=True)} or {"-": 0.0}
        first_stage[query_id] = {doc_id: float(len(ids) - rank) for rank, doc_id in enumerate(ids)} or {"-": 0.0}
    metrics = ("ndcg@10", "mrr@10")
    ours, _ = ir_metrics(qrels, reranked, metrics)
    theirs, _ = ir_metrics(qrels, first_stage, metrics)
    return {
        **{f"dev_{name}": value for name, value in ours.items()},
        **{f"dev_first_stage_{name}": value for name, value in theirs.items()},
    }


# --------------------------------------------------------------------------- training


@dataclass
class RerankerConfig:
    # All SciFact train claims but 80 held out (dev: reranking BM25's top 20, BM25 itself 0.629): dev nDCG@10
    # 0.661, 0.731, 0.717 after epochs 1-3 (keep_best keeps the second). On 300 claims an in-batch softmax loss
    # reached 0.55 in two epochs where this BCE reached 0.64.
    epochs: int = 3
    batch_size: int = 16
    learning_rate: float = 5e-5
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    seed: int = 13
    max_length: int = 256  # question + chunk; chunks are ≤ 256 tokens, so long ones lose their tail
    hard_negatives: int = 2  # mined per pair
    random_negatives: int = 1  # per question: a passage relevant to another question
    logging_steps: int = 20
    keep_best: bool = True  # with a dev set: keep the epoch with the best dev nDCG@10, not the last
    dev_depth: int = 20  # BM25 candidates per held-out question

    @classmethod
    def small(cls) -> RerankerConfig:
        """A seconds-long configuration for CI: one short epoch, short sequences, one negative of each kind."""
        return cls(epochs=1, batch_size=8, learning_rate=5e-5, max_length=64, hard_negatives=1, logging_steps=1)

    @classmethod
    def preset(cls, name: str, epochs: int = 0) -> RerankerConfig:
        """`small` (seconds, for CI) or the default, with `epochs` when not 0."""
        if name not in ("small", "default"):
            raise ValueError(f"reranker preset {name!r} is unknown — use `default` or `small`")
        config = cls.small() if name == "small" else cls()
        return replace(config, epochs=epochs) if epochs else config


@dataclass
class RerankerResult:
    model_dir: Path
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)
    pairs: int = 0
    positives: int = 0


def cross_encoder_from(base_dir: Path, max_length: int):
    """A CrossEncoder to train: a saved one as it is, or a BERT-style encoder (the bundled MiniLM, a
    fine-tuned embedder) with a fresh one-logit classification head on its [CLS] pooler."""
    from sentence_transformers import CrossEncoder
    from sentence_transformers.base.modules.transformer import Transformer

    if is_cross_encoder(base_dir):
        return CrossEncoder(str(base_dir), device="cpu", local_files_only=True, max_length=max_length)
    local = {"local_files_only": True}
    encoder = Transformer(
        str(base_dir),
        transformer_task="sequence-classification",
        config_kwargs={"num_labels": 1, **local},
        model_kwargs=local,
        processor_kwargs=local,
        max_seq_length=max_length,
    )
    return CrossEncoder(modules=[encoder], device="cpu")


def train_reranker(
    examples: list[TrainingExample],
    base_dir: Path,
    output_dir: Path,
    config: RerankerConfig,
    on_epoch: EpochCallback | None = None,
    dev: RerankDevSet | None = None,
) -> RerankerResult:
    """Train a cross-encoder from `base_dir` on `examples` (with mined negatives) and save it to `output_dir`.

    Positives are weighted by the negatives-per-positive ratio, so the loss does not learn "mostly no".
    `on_epoch(epoch, metrics)` gets the mean training loss and, given `dev`, reranking nDCG@10 on it — also
    once before training as epoch 0. With `dev` and `config.keep_best`, the saved model is the epoch with the
    best dev nDCG@10 (its metrics carry `saved`: 1.0); otherwise the last."""
    import torch
    from datasets import Dataset
    from sentence_transformers.cross_encoder import CrossEncoderTrainer, CrossEncoderTrainingArguments
    from sentence_transformers.cross_encoder.losses import BinaryCrossEntropyLoss

    if not examples:
        raise ValueError("no training examples — check the train qrels (RAG_TRAIN_SPLIT) or max_train_queries")
    started = time.perf_counter()
    torch.manual_seed(config.seed)  # the fresh head's initial weights
    model = cross_encoder_from(base_dir, config.max_length)
    queries, passages, labels = reranker_pairs(examples, config.random_negatives, config.seed)
    positives = int(sum(labels))
    negatives = len(labels) - positives
    history: list[dict[str, float]] = []

    def save() -> None:
        output_dir.mkdir(parents=True, exist_ok=True)
        model.save(str(output_dir), safe_serialization=True)

    def score(query: str, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros(0, dtype=np.float32)
        pairs = [(query, text) for text in texts]
        return model.predict(pairs, batch_size=32, activation_fn=torch.nn.Identity(), show_progress_bar=False)

    reporter, report = epoch_reporter(
        (lambda: evaluate_reranker(score, dev)) if dev is not None else None, save, config.keep_best, history, on_epoch
    )
    if dev is not None:
        report(0, None)
    with tempfile.TemporaryDirectory(prefix="reranker-") as scratch:
        arguments = CrossEncoderTrainingArguments(**cpu_training_arguments(config, scratch))
        trainer = CrossEncoderTrainer(
            model=model,
            args=arguments,
            train_dataset=Dataset.from_dict({"query": queries, "passage": passages, "label": labels}),
            loss=BinaryCrossEntropyLoss(model, pos_weight=torch.tensor(max(negatives, 1) / max(positives, 1))),
            callbacks=[reporter],
        )
        trainer.train()
    if not any(metrics.get("saved") for metrics in history):
        save()
    seconds = time.perf_counter() - started
    log.info("reranker: %d pairs (%d positive) in %.0f s → %s", len(labels), positives, seconds, output_dir)
    return RerankerResult(output_dir, seconds, history, len(labels), positives)
