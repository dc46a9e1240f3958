"""A Milvus Lite file written through MilvusStore (with its search log) and both search engines over it, with
rows made from the vendored SciFact abstracts: for tests of the engines and of what runs on them."""

from __future__ import annotations

import contextlib
import gzip
import json
from pathlib import Path

import numpy as np

from rag_core.search.analyzer import STANDARD, analyzed
from rag_core.search.engines import IndexConnection, MemoryEngine, MilvusEngine
from rag_core.search.log import SearchLog
from rag_core.store import IndexBuild

CORPUS = Path(__file__).resolve().parents[2] / "evals" / "datasets" / "scifact" / "corpus.jsonl.gz"
DIMENSION = 32
BUILD = IndexBuild("test-model", "test-model@abc123", DIMENSION, "tokens64-overlap8")


def scifact(count: int, skip: int = 0) -> list[dict]:
    with gzip.open(CORPUS) as handle:
        records = [json.loads(line) for _, line in zip(range(skip + count), handle, strict=False)]
    return records[skip:]


def rows_for(
    records: list[dict], vectors: np.ndarray, tenant_of, prefix: str = "", analyzer: str = STANDARD
) -> list[dict]:
    return [
        {
            "chunk_id": f"{prefix}{record['_id']}#0",
            "doc_id": f"{prefix}{record['_id']}",
            "source_key": f"source-{index % 4}",
            "tenant": tenant_of(index),
            "source": f"source-{index % 4}.jsonl",
            "title": record["title"],
            "text": record["text"],
            "search_text": analyzed(f"{record['title']}\n{record['text']}", analyzer),
            "position": 0,
            "start_char": 0,
            "end_char": len(record["text"]),
            "dense": vector.tolist(),
            "metadata": {},
        }
        for index, (record, vector) in enumerate(zip(records, vectors, strict=True))
    ]


class Index:
    """A Milvus Lite file written through MilvusStore (which appends to the search log) and both engines."""

    def __init__(self, root: Path, alias: str = "idx", build: IndexBuild = BUILD) -> None:
        self.build = build
        self.uri = str(root / "milvus.db")
        self.connection = IndexConnection(self.uri, "", alias, root / "search", lock_timeout_s=30)
        self.memory = MemoryEngine(SearchLog(root / "search"), alias, self.connection.store)

    def write(self, rows: list[dict], collection: str | None = None, publish: bool = True) -> str:
        with self.connection.store() as store:
            name = store.ensure_collection(self.build, collection)
            store.upsert(name, rows)
            if publish:
                store.point_alias(name)
        return name

    @contextlib.contextmanager
    def milvus(self):
        with self.connection.store() as store:
            yield MilvusEngine(store)
