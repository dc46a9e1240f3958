"""Retrieval evaluation on BEIR-layout datasets with ranx (nDCG@10, recall@k, MRR@10, MAP).

A dataset is a folder: `corpus.jsonl[.gz]`, `queries.jsonl[.gz]`, `qrels/<split>.tsv` (query-id,
corpus-id, score, with a header line) and optionally `answers.jsonl[.gz]` (query `_id` → reference
`answer`). Chunks are retrieved and scored per document by their best chunk, as BEIR judges documents.
"""

from __future__ import annotations

import csv
import gzip
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

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


def ir_metrics(
    qrels: dict[str, dict[str, int]], run: dict[str, dict[str, float]], metrics=DEFAULT_METRICS
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """(mean per metric, per-query scores per metric), computed by ranx."""
    from ranx import Qrels, Run, evaluate

    ranx_qrels, ranx_run = Qrels(qrels), Run(run)
    means = evaluate(ranx_qrels, ranx_run, list(metrics), make_comparable=True)
    per_query = {
        metric: {query: float(value) for query, value in ranx_run.scores[metric].items()} for metric in metrics
    }
    return {metric: round(float(value), 4) for metric, value in means.items()}, per_query
