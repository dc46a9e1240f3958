"""The naive baseline every retrieval report is measured against, and what losing to it likely means.

Naive is the plain way to use the same model on the same documents: one vector per whole document (title +
text, one `encode`, truncated at the model's limit), BM25 over whole documents with the project's one
analyzer, and RRF 1:1 (k=60). No chunking, no best-chunk aggregation, no tuned fusion. The documents are
the ones the evaluated collection holds, each rebuilt from its chunk rows; the whole-document vectors go
through the embedding cache, so a rerun encodes nothing new. The in-memory index and the query engine the
API serves with do the searching, so naive and pipeline differ only in what they index and how they fuse.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc

from rag_core.chunking import search_text
from rag_core.embedding import Embedder, EmbeddingCache, embed_with_cache
from rag_core.evaluation import EvalDataset, RetrievalEvaluation, evaluate_engine
from rag_core.ids import chunk_id, content_hash
from rag_core.retrieval import FusionConfig
from rag_core.search.analyzer import analyzed
from rag_core.search.memory import MemoryIndex, row_schema

if TYPE_CHECKING:
    from rag_core.search.engines import Searcher

NAIVE_FUSION = FusionConfig(rrf_k=60, dense_weight=1.0, bm25_weight=1.0, candidates=100, method="rrf", head_bonus=0.0)
NAIVE_DESCRIPTION = (
    "the same model on whole documents (title + text, one encode truncated at the model's limit), "
    "BM25 over whole documents with the same analyzer, RRF 1:1 (k=60)"
)
BASELINE_METRICS = ("ndcg@10", "recall@100", "mrr@10")  # what reports, MLflow and metadata show per mode
HEADLINE_METRIC = "ndcg@10"  # a negative margin in this metric is a warning
CHUNK_FIELDS = ["doc_id", "tenant", "source", "source_key", "title", "text", "position", "start_char", "end_char"]


@dataclass(frozen=True)
class WholeDocument:
    doc_id: str
    tenant: str
    source: str
    source_key: str
    title: str
    text: str

    @property
    def search_text(self) -> str:
        return search_text(self.title, self.text)


def whole_documents(chunks: pa.Table, tenant: str | None = None) -> list[WholeDocument]:
    """Each document of `tenant` (None: every tenant) rebuilt from its chunk rows. In order of position,
    a chunk adds what lies past the end of the text so far (chunks overlap); a gap between two chunks
    (whitespace the chunker left out) becomes one space."""
    chunks = chunks.filter(pc.greater_equal(chunks.column("position"), 0))  # not the document entries
    if tenant is not None:
        chunks = chunks.filter(pc.equal(chunks.column("tenant"), tenant))
    grouped: dict[tuple[str, str, str], list[dict]] = {}
    for row in chunks.to_pylist():
        grouped.setdefault((row["tenant"], row["source"], row["doc_id"]), []).append(row)
    documents = []
    for (row_tenant, source, doc_id), rows in sorted(grouped.items()):
        rows.sort(key=lambda row: row["position"])
        text, end = "", None
        for row in rows:
            if end is None:
                text = row["text"]
            elif row["start_char"] > end:
                text += " " + row["text"]
            else:
                text += row["text"][end - row["start_char"] :]
            end = row["end_char"] if end is None else max(end, row["end_char"])
        documents.append(WholeDocument(doc_id, row_tenant, source, rows[0]["source_key"], rows[0]["title"], text))
    return documents


def naive_index(
    documents: list[WholeDocument], embedder: Embedder, cache: EmbeddingCache, analyzer: str
) -> MemoryIndex:
    """An in-memory index with one row per whole document, its BM25 field written by `analyzer` (the
    evaluated build's); vectors from the cache where it has them."""
    texts = [document.search_text for document in documents]
    vectors, _ = embed_with_cache(embedder, cache, texts, [content_hash(text) for text in texts])
    table = pa.Table.from_pylist(
        [
            {
                "chunk_id": chunk_id(document.tenant, document.source, document.doc_id, 0, text),
                "doc_id": document.doc_id,
                "source_key": document.source_key,
                "tenant": document.tenant,
                "source": document.source,
                "title": document.title,
                "text": document.text,
                "position": 0,
                "start_char": 0,
                "end_char": len(document.text),
                "search_text": analyzed(text, analyzer),
            }
            for document, text in zip(documents, texts, strict=True)
        ],
        schema=row_schema(),
    )
    return MemoryIndex.build(table, vectors, dimension=embedder.dimension, analyzer=analyzer)


def naive_baseline(
    searcher: Searcher,
    collection: str,
    embedder: Embedder,
    cache: EmbeddingCache,
    judged: EvalDataset,
    modes: list[str],
    tenant: str,
    depth: int = 100,
) -> RetrievalEvaluation:
    """The naive baseline over the documents `collection` holds for `tenant`, on the judged queries."""
    documents = whole_documents(searcher.row_table(CHUNK_FIELDS), tenant)
    index = naive_index(documents, embedder, cache, searcher.analyzer)
    return evaluate_engine(index, NAIVE_FUSION, embedder, judged, modes, tenant, f"naive:{collection}", depth=depth)


@dataclass(frozen=True)
class Shortfall:
    """The modes in which a build scores below the naive baseline, and the likely cause."""

    collection: str
    margins: dict[str, float]  # {losing mode: its negative HEADLINE_METRIC margin}
    cause: str
    message: str


def shortfall(evaluation: RetrievalEvaluation) -> Shortfall | None:
    """None when the build is not below the naive baseline in any mode (or has no baseline). Dense or BM25
    losing points at chunking and best-chunk aggregation (the naive side differs only there); hybrid alone
    losing points at fusion."""
    losing = {
        mode: margins[HEADLINE_METRIC]
        for mode, margins in evaluation.margins().items()
        if margins[HEADLINE_METRIC] < 0
    }
    if not losing:
        return None
    if set(losing) - {"hybrid"}:
        cause = "chunking"
        advice = (
            "scoring a document by its best chunk loses to scoring it whole — chunking (or the aggregation of "
            "chunk scores) costs quality on this corpus; try larger chunks (RAG_CHUNK_MAX_TOKENS) that keep "
            "documents whole"
        )
    else:
        cause = "fusion"
        advice = (
            "dense and BM25 hold up, so the fusion costs quality on this corpus; try RRF 1:1 "
            "(RAG_FUSION_METHOD=rrf, equal weights)"
        )
    margins = ", ".join(f"{mode} {margin:+.4f}" for mode, margin in losing.items())
    message = (
        f"{evaluation.collection} is below the naive baseline in {HEADLINE_METRIC} ({margins}); "
        f"likely cause: {advice}"
    )
    return Shortfall(evaluation.collection, losing, cause, message)
