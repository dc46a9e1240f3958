"""Retrieval evaluation on BEIR-layout datasets (nDCG@10, recall@k, MRR@10, MAP).

A dataset is a folder: `corpus.jsonl[.gz]`, `queries.jsonl[.gz]`, `qrels/<split>.tsv` (query-id,
corpus-id, score, with a header line) and optionally `answers.jsonl[.gz]` (query `_id` → reference
`answer`). Chunks are retrieved and scored per document by their best chunk, as BEIR judges documents.
Each evaluation carries the naive baseline on the same queries (rag_core.baseline) when asked for.
"""

from __future__ import annotations

import csv
import gzip
import json
import math
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rag_core.embedding import Embedder, EmbeddingCache
    from rag_core.generation import LLMConfig
    from rag_core.query import QueryEngine
    from rag_core.rerank import Reranker
    from rag_core.retrieval import FusionConfig
    from rag_core.search.engines import Searcher

DEFAULT_METRICS = ("ndcg@10", "recall@10", "recall@100", "mrr@10", "map@100")


def _open_jsonl(folder: Path, stem: str) -> Iterator[dict]:
    for name, opener in ((f"{stem}.jsonl", open), (f"{stem}.jsonl.gz", gzip.open)):
        path = folder / name
        if path.exists():
            with opener(path, "rt", encoding="utf-8") as handle:
                for line in handle:
                    if line.strip():
                        yield json.loads(line)
            return
    raise FileNotFoundError(f"{folder} has no {stem}.jsonl or {stem}.jsonl.gz (BEIR layout expected)")


@dataclass
class EvalDataset:
    name: str
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    answers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, folder: Path, split: str) -> EvalDataset:
        qrels_path = folder / "qrels" / f"{split}.tsv"
        if not qrels_path.exists():
            raise FileNotFoundError(f"{qrels_path} not found — the split {split!r} needs qrels/{split}.tsv")
        qrels: dict[str, dict[str, int]] = {}
        with qrels_path.open() as handle:
            rows = csv.reader(handle, delimiter="\t")
            next(rows, None)
            for query_id, doc_id, score, *_ in rows:
                if int(score) > 0:
                    qrels.setdefault(query_id, {})[doc_id] = int(score)
        all_queries = {record["_id"]: record["text"] for record in _open_jsonl(folder, "queries")}
        missing = sorted(set(qrels) - set(all_queries))
        if missing:
            raise ValueError(f"{len(missing)} judged queries are missing from queries.jsonl (e.g. {missing[0]})")
        answers = {}
        if any((folder / f"answers.jsonl{ext}").exists() for ext in ("", ".gz")):
            answers = {r["_id"]: r["answer"] for r in _open_jsonl(folder, "answers") if r["_id"] in qrels}
        return cls(f"{folder.name}/{split}", {q: all_queries[q] for q in qrels}, qrels, answers)


def document_run(
    dataset: EvalDataset, search: Callable[[str], list[tuple[str, float]]], depth: int = 100
) -> dict[str, dict[str, float]]:
    """{query id: {doc id: score}}; `search` returns ranked (doc id, score) per chunk, best chunk wins."""
    run: dict[str, dict[str, float]] = {}
    for query_id, text in dataset.queries.items():
        scores: dict[str, float] = {}
        for doc_id, score in search(text)[:depth]:
            scores[doc_id] = max(score, scores.get(doc_id, float("-inf")))
        run[query_id] = scores or {"__none__": 0.0}
    return run


IR_METRICS = ("ndcg", "recall", "mrr", "map", "precision")


def ir_metrics(
    qrels: dict[str, dict[str, int]], run: dict[str, dict[str, float]], metrics=DEFAULT_METRICS
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """(mean per metric rounded to 4 places, per-query scores per metric) over the judged queries of `qrels`.

    The definitions are trec_eval's, as ranx computes them: nDCG with linear gains (the qrels grade),
    recall@k, reciprocal rank within k, average precision within k over every relevant document, precision@k
    (`@k` omitted: the whole run). Documents graded below 1 are not relevant; a judged query missing from
    `run` scores 0 and a run's query nobody judged is ignored; equal scores keep the run's order. Plain
    Python, deterministic and thread-safe: with ranx, whose numba functions concurrent processes compile into
    one shared on-disk cache, the same runs once scored 0.13 and then 0.69 while other processes compiled."""
    parsed = [_parse_metric(metric) for metric in metrics]
    per_query: dict[str, dict[str, float]] = {metric: {} for metric in metrics}
    for query_id, judged in qrels.items():
        relevant = {doc_id: grade for doc_id, grade in judged.items() if grade >= 1}
        ranked = [doc_id for doc_id, _ in sorted(run.get(query_id, {}).items(), key=lambda item: -item[1])]
        for metric, (name, k) in zip(metrics, parsed, strict=True):
            per_query[metric][query_id] = _query_metric(name, k, relevant, ranked)
    means = {
        metric: round(math.fsum(scores.values()) / len(scores), 4) if scores else 0.0
        for metric, scores in per_query.items()
    }
    return means, per_query


def _parse_metric(metric: str) -> tuple[str, int]:
    name, _, cutoff = metric.partition("@")
    if name not in IR_METRICS or (cutoff and not cutoff.isdigit()):
        raise ValueError(f"unknown metric {metric!r} — use one of {', '.join(IR_METRICS)}, optionally @k")
    return name, int(cutoff or 0)


def _query_metric(name: str, k: int, relevant: Mapping[str, int], ranked: list[str]) -> float:
    if not relevant:
        return 0.0
    top = ranked[:k] if k else ranked
    grades = [relevant.get(doc_id, 0) for doc_id in top]
    if name == "ndcg":
        ideal = sorted(relevant.values(), reverse=True)[: k or len(relevant)]
        dcg = sum(grade / math.log2(rank + 2) for rank, grade in enumerate(grades))
        return dcg / sum(grade / math.log2(rank + 2) for rank, grade in enumerate(ideal))
    hits = [grade > 0 for grade in grades]
    if name == "recall":
        return sum(hits) / len(relevant)
    if name == "precision":
        return sum(hits) / len(top) if top else 0.0
    if name == "mrr":
        return next((1.0 / (rank + 1) for rank, hit in enumerate(hits) if hit), 0.0)
    found, precision_sum = 0, 0.0  # map
    for rank, hit in enumerate(hits):
        if hit:
            found += 1
            precision_sum += found / (rank + 1)
    return precision_sum / len(relevant)


def restrict_to_documents(dataset: EvalDataset, doc_ids: set[str]) -> EvalDataset:
    """The dataset judged against the documents the index holds: a query whose relevant documents are
    all missing cannot be answered by this index and is dropped (counted in the report)."""
    qrels = {
        query: kept
        for query, judged in dataset.qrels.items()
        if (kept := {doc: score for doc, score in judged.items() if doc in doc_ids})
    }
    queries = {query: dataset.queries[query] for query in qrels}
    answers = {query: answer for query, answer in dataset.answers.items() if query in qrels}
    return EvalDataset(dataset.name, queries, qrels, answers)


@dataclass
class ModeResult:
    means: dict[str, float]
    per_query: dict[str, dict[str, float]]


@dataclass
class RetrievalEvaluation:
    dataset: str
    collection: str
    queries: int
    dropped_queries: int
    modes: dict[str, ModeResult]
    seconds: float
    baseline: RetrievalEvaluation | None = None  # the naive baseline on the same queries (rag_core.baseline)
    # As served where the API reranks this build: the same queries through the same engine with its reranker, in
    # the modes it reranks (the gate compares first stages: a reranker is judged per build, after promotion).
    reranked: RetrievalEvaluation | None = None
    reranker: str = ""  # that reranker's version and weights

    def margins(self) -> dict[str, dict[str, float]]:
        """{mode: {metric: this build's mean − the naive baseline's}}; empty without a baseline."""
        if self.baseline is None:
            return {}
        return {
            mode: {
                metric: round(value - self.baseline.modes[mode].means[metric], 4)
                for metric, value in result.means.items()
            }
            for mode, result in self.modes.items()
            if mode in self.baseline.modes
        }

    def table(self) -> str:
        """One row per mode; with a baseline, a `naive <mode>` row and a signed `margin <mode>` row each."""
        metrics = list(next(iter(self.modes.values())).means) if self.modes else []
        lines = ["| mode | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
        for mode, result in self.modes.items():
            lines.append(f"| {mode} | " + " | ".join(f"{result.means[m]:.4f}" for m in metrics) + " |")
        if self.baseline is not None:
            for mode, result in self.baseline.modes.items():
                lines.append(f"| naive {mode} | " + " | ".join(f"{result.means[m]:.4f}" for m in metrics) + " |")
            for mode, margins in self.margins().items():
                lines.append(f"| margin {mode} | " + " | ".join(f"{margins[m]:+.4f}" for m in metrics) + " |")
        for mode, result in (self.reranked.modes if self.reranked else {}).items():
            scores = " | ".join(f"{result.means[m]:.4f}" for m in metrics)
            lines.append(f"| {mode} reranked, as served | {scores} |")
        return "\n".join(lines)


def evaluate_retrieval(
    dataset: EvalDataset,
    encode: Callable[[list[str]], list[list[float]]],
    search: Callable[[str, list[float] | None, str], list[tuple[str, float]]],
    modes: list[str],
    collection: str = "",
    dropped_queries: int = 0,
) -> RetrievalEvaluation:
    """Runs every query in every mode. `search(text, vector, mode)` returns ranked (doc id, score) per chunk."""
    started = time.perf_counter()
    texts = list(dataset.queries.values())
    vectors = dict(zip(texts, encode(texts), strict=True)) if texts else {}
    results = {}
    for mode in modes:
        run = document_run(dataset, lambda text, mode=mode: search(text, vectors.get(text), mode))
        means, per_query = ir_metrics(dataset.qrels, run)
        results[mode] = ModeResult(means, per_query)
    return RetrievalEvaluation(
        dataset.name, collection, len(dataset.queries), dropped_queries, results, time.perf_counter() - started
    )


def write_report(evaluations: dict[str, RetrievalEvaluation], folder: Path, title: str) -> Path:
    """A markdown report with two plots: nDCG@10 per mode for each build, and its per-query distribution."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    figure, (bars, boxes) = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.8 / max(len(evaluations), 1)
    labels: list[str] = []
    for index, (role, evaluation) in enumerate(evaluations.items()):
        modes = list(evaluation.modes)
        labels = modes
        values = [evaluation.modes[mode].means["ndcg@10"] for mode in modes]
        bars.bar([i + index * width for i in range(len(modes))], values, width, label=role)
    bars.set_xticks([i + width * (len(evaluations) - 1) / 2 for i in range(len(labels))], labels)
    bars.set_ylabel("nDCG@10")
    bars.set_ylim(0, 1)
    bars.legend()
    bars.set_title("nDCG@10 per mode")
    series, names = [], []
    for role, evaluation in evaluations.items():
        for mode, result in evaluation.modes.items():
            series.append(list(result.per_query["ndcg@10"].values()))
            names.append(f"{role}\n{mode}")
    boxes.boxplot(series, tick_labels=names)
    boxes.set_title("per-query nDCG@10")
    figure.tight_layout()
    plot = folder / "ndcg_by_mode.png"
    figure.savefig(plot, dpi=90)
    plt.close(figure)
    sections = [f"# {title}", ""]
    for role, evaluation in evaluations.items():
        sections += [
            f"## {role}: `{evaluation.collection}`",
            f"{evaluation.dataset}: {evaluation.queries} queries judged against indexed documents "
            f"({evaluation.dropped_queries} dropped: none of their relevant documents is indexed); "
            f"{evaluation.seconds:.1f} s",
            "",
            evaluation.table(),
            "",
        ]
        if evaluation.baseline is not None:
            from rag_core.baseline import NAIVE_DESCRIPTION, shortfall

            sections += [f"naive: {NAIVE_DESCRIPTION}. margin: this build minus naive.", ""]
            if (losing := shortfall(evaluation)) is not None:
                sections += [f"**Warning:** {losing.message}", ""]
    sections.append(f"![nDCG@10 per mode]({plot.name})")
    report = folder / "retrieval_report.md"
    report.write_text("\n".join(sections) + "\n")
    return report


def judged_dataset(
    dataset: EvalDataset, doc_ids: set[str], collection: str, max_queries: int = 0
) -> EvalDataset:
    """The queries a collection can answer (see `restrict_to_documents`), the first `max_queries` by id."""
    judged = restrict_to_documents(dataset, doc_ids)
    if max_queries and len(judged.queries) > max_queries:
        keep = sorted(judged.queries)[:max_queries]
        judged = EvalDataset(
            judged.name,
            {q: judged.queries[q] for q in keep},
            {q: judged.qrels[q] for q in keep},
            {q: a for q, a in judged.answers.items() if q in keep},
        )
    if not judged.queries:
        raise ValueError(
            f"none of the {len(dataset.queries)} queries of {dataset.name} has a relevant document in {collection} — "
            "point RAG_EVAL_DATASET_DIR at a labelled set for the documents you index"
        )
    return judged


def serving_engine(
    searcher: Searcher,
    embedder: Embedder,
    fusion: FusionConfig,
    llm: LLMConfig | None = None,
    reranker: Reranker | None = None,
    rerank_candidates: int = 0,  # 0: the API's default
) -> QueryEngine:
    """The query engine the API serves with, over `searcher`, embedding queries with `embedder` (the model
    the build was made with); with `llm` it also answers, with `reranker` it reranks the modes that one does."""
    from rag_core.query import DEFAULT_RERANK_CANDIDATES, QueryEngine

    def encode(text: str) -> list[float]:
        return embedder.encode([text])[0].tolist()

    candidates = rerank_candidates or DEFAULT_RERANK_CANDIDATES
    return QueryEngine(searcher, encode, fusion, llm, reranker=reranker, rerank_candidates=candidates)


def evaluate_engine(
    searcher: Searcher,
    fusion: FusionConfig,
    embedder: Embedder,
    judged: EvalDataset,
    modes: list[str],
    tenant: str,
    collection: str,
    dropped_queries: int = 0,
    depth: int = 100,
    reranker: Reranker | None = None,
    rerank_candidates: int = 0,  # 0: the API's default
) -> RetrievalEvaluation:
    """The judged queries against one searcher, in each mode, through the query engine the API serves with."""
    from rag_core.query import Query
    from rag_core.retrieval import SearchFilter

    engine = serving_engine(searcher, embedder, fusion, reranker=reranker, rerank_candidates=rerank_candidates)
    search_filter = SearchFilter(tenant)

    def search(text: str, vector: list[float] | None, mode: str) -> list[tuple[str, float]]:
        chunks = engine.retrieve(Query(text, depth, mode, search_filter), vector)  # type: ignore[arg-type]
        return [(chunk.doc_id, chunk.score) for chunk in chunks]

    return evaluate_retrieval(
        judged,
        lambda texts: [vector.tolist() for vector in embedder.encode(texts)],
        search,
        modes,
        collection,
        dropped_queries,
    )


def evaluate_collection(
    searcher: Searcher,
    collection: str,
    embedder: Embedder,
    dataset: EvalDataset,
    modes: list[str],
    fusion: FusionConfig,
    tenant: str,
    max_queries: int = 0,
    depth: int = 100,
    baseline_cache: EmbeddingCache | None = None,
    reranker: Reranker | None = None,
    rerank_candidates: int = 0,  # 0: the API's default
) -> RetrievalEvaluation:
    """The dataset's queries against one collection of the live index, in each mode, through the query
    engine the API serves with. With `baseline_cache` (where whole-document vectors are kept), the naive
    baseline over the same collection's documents is measured on the same queries and attached. With the
    `reranker` the API serves the build with, the modes it reranks are also measured reranked (`reranked`)."""
    judged = judged_dataset(dataset, searcher.doc_ids(), collection, max_queries)
    dropped = len(dataset.queries) - len(judged.queries)
    evaluation = evaluate_engine(searcher, fusion, embedder, judged, modes, tenant, collection, dropped, depth)
    weights = {mode: weight for mode in modes if (weight := reranker.weight_for(mode)) is not None} if reranker else {}
    if reranker is not None and weights:
        from rag_core.promotion import rerank_modes_text

        evaluation.reranked = evaluate_engine(
            searcher, fusion, embedder, judged, list(weights), tenant, collection, dropped, depth, reranker,
            rerank_candidates,
        )
        evaluation.reranker = f"{reranker.version} in {rerank_modes_text(weights)}"
    if baseline_cache is not None:
        from rag_core.baseline import naive_baseline

        evaluation.baseline = naive_baseline(
            searcher, collection, embedder, baseline_cache, judged, modes, tenant, depth
        )
    return evaluation
