"""The fine-tuning set: (question, passage) pairs from the train qrels with whole queries held out for the
per-epoch dev metrics, plus pairs from the served index — answers users marked relevant (the serving
feedback table) and, with a generative LLM, synthetic questions written for its chunks."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

from rag_core.finetune import DevSet, TrainingExample, load_corpus, pairs_from_feedback, pairs_from_qrels
from rag_core.generation import LLMConfig
from rag_core.querylog import ServingDatabase
from rag_core.store import MilvusStore
from rag_core.synthetic_questions import synthetic_questions


@dataclass
class TrainingSet:
    examples: list[TrainingExample]
    corpus: dict[str, str]  # the dataset's documents (doc id → embedded text): where negatives are mined
    dev: DevSet | None  # held-out train queries, or None when there are too few to hold any out
    origins: dict[str, int] = field(default_factory=dict)  # examples per origin: qrels, feedback, synthetic
    notes: list[str] = field(default_factory=list)  # why an asked-for origin added nothing
    held_out: list[TrainingExample] = field(default_factory=list)  # the dev queries' pairs, for the refit


def dev_split(
    examples: list[TrainingExample], corpus: dict[str, str], dev_fraction: float, dev_corpus_size: int
) -> tuple[list[TrainingExample], DevSet | None]:
    """Hold out whole queries (never pairs of a training query) for the per-epoch dev metrics: the dev
    queries are ranked against their relevant documents plus a sample of others, `dev_corpus_size` in all."""
    queries = sorted({example.query_id for example in examples})
    count = int(len(queries) * dev_fraction) if len(queries) >= 10 else 0
    held = set(random.Random(7).sample(queries, count))
    if not held:
        return examples, None
    train = [example for example in examples if example.query_id not in held]
    dev = [example for example in examples if example.query_id in held]
    qrels: dict[str, dict[str, int]] = {}
    for example in dev:
        qrels.setdefault(example.query_id, {})[example.positive_id] = 1
    relevant = {doc for judged in qrels.values() for doc in judged}
    others = sorted(set(corpus) - relevant)
    sample = random.Random(11).sample(others, min(len(others), max(0, dev_corpus_size - len(relevant))))
    dev_corpus = {doc: corpus[doc] for doc in [*sorted(relevant), *sample]}
    dev_queries = {example.query_id: example.query for example in dev}
    return train, (dev_queries, dev_corpus, qrels)


def qrels_training_set(
    dataset_dir: Path, split: str, limit: int, dev_fraction: float, dev_corpus_size: int
) -> TrainingSet:
    """The judged pairs of qrels/<split>.tsv (the first `limit`; 0 = all), less the dev queries held out."""
    pairs = pairs_from_qrels(dataset_dir, split, limit=limit or None)
    corpus = load_corpus(dataset_dir)
    examples, dev = dev_split(pairs, corpus, dev_fraction, dev_corpus_size)
    held_out = [pair for pair in pairs if dev is not None and pair.query_id in dev[0]]
    origins = {"qrels": len(examples), "feedback": 0, "synthetic": 0}
    return TrainingSet(examples, corpus, dev, origins, held_out=held_out)


def feedback_examples(store: MilvusStore, collection: str, serving_db_url: str) -> list[TrainingExample]:
    """(question, the first chunk it retrieved) of each answer users marked relevant, with the chunk's
    text as `collection` holds it."""
    relevant = [(question, ids[:1]) for question, ids in ServingDatabase(serving_db_url).relevant_pairs()]
    texts = store.texts_by_chunk_id(collection, sorted({ids[0] for _, ids in relevant if ids}))
    return pairs_from_feedback(relevant, texts)


def synthetic_examples(store: MilvusStore, collection: str, count: int, llm: LLMConfig) -> list[TrainingExample] | None:
    """A question `llm` wrote for each of `count` chunks spread over `collection`; None when `llm` is not a
    generative model. A chunk the LLM wrote no question for is left out."""
    passages = store.sample_texts(collection, count)
    questions = synthetic_questions(list(passages.values()), llm)
    if questions is None:
        return None
    return [
        TrainingExample(question, passage, None, "synthetic", f"synthetic:{chunk}", chunk)
        for (chunk, passage), question in zip(passages.items(), questions, strict=True)
        if question
    ]


def add_served_examples(
    training: TrainingSet, store: MilvusStore, serving_db_url: str, synthetic: int, llm: LLMConfig
) -> None:
    """Adds pairs from the collection the alias serves (nothing is served: nothing to add): users'
    relevance feedback when `serving_db_url` is given, and questions for `synthetic` of its chunks."""
    served = store.alias_target()
    if not served:
        return
    if serving_db_url:
        feedback = feedback_examples(store, served, serving_db_url)
        training.examples += feedback
        training.origins["feedback"] = len(feedback)
    if synthetic:
        written = synthetic_examples(store, served, synthetic, llm)
        if written is None:
            training.notes.append(f"synthetic questions skipped: {llm.model} is not a generative model")
        else:
            training.examples += written
            training.origins["synthetic"] = len(written)
