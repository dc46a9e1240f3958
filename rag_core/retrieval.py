"""Retrieval over the served collection: dense, BM25, and hybrid (both fused with weighted RRF, or with a
convex combination of min-max-normalised scores).

Steps read like small components: a searcher (rag_core.search.engines: in memory or in Milvus) returns
ranked dense and BM25 hits, `fuse_rrf` and
`fuse_convex` combine ranked lists (`fuse` picks one by `FusionConfig.method`). Fusion runs here rather than
in Milvus' hybrid_search so the same code works on every Milvus engine (Milvus Lite 2.5's hybrid_search fails
with a BM25 function) and lists can be weighted.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Literal, Protocol

from rag_core.search.filters import FILTERABLE as FILTERABLE  # re-exported: the API validates against it
from rag_core.search.filters import InvalidFilter as InvalidFilter
from rag_core.search.filters import SearchFilter

if TYPE_CHECKING:  # the settings import FusionConfig: keep this module free of Milvus and faiss at import
    from rag_core.search.engines import Searcher
    from rag_core.store import Hit

Mode = Literal["dense", "bm25", "hybrid"]
# Chunks read per document to find each one's best for BM25-only results: a document's best chunk is nearly
# always among its own first few hits.
PASSAGES_PER_DOCUMENT = 20
FusionMethod = Literal["rrf", "convex"]


class FusionSettings(Protocol):
    fusion_method: str
    rrf_k: int
    dense_weight: float
    bm25_weight: float
    fusion_candidates: int
    head_bonus: float


FUSION_SETTINGS = frozenset(FusionSettings.__annotations__)  # the settings that make a FusionConfig


@dataclass(frozen=True)
class FusionConfig:
    """How hybrid retrieval fuses the dense and BM25 lists. The defaults are the served ones (the settings
    take theirs from here): tuned on SciFact *train* (evals/bench_finetune.py), a convex combination of
    min-max-normalised scores beat weighted RRF by ~0.03 nDCG@10 for both the base and the fine-tuned model."""

    rrf_k: int = 60
    dense_weight: float = 0.55
    bm25_weight: float = 0.45
    candidates: int = 100  # per list, before fusion
    method: FusionMethod = "convex"  # "convex": Σ weight · min-max-normalised score (rrf_k unused)
    # Added to the cosine of each document's first chunk (dense and hybrid): a lead prior, since a document's
    # head states what it is about and a short document's one chunk is all of it. Picked on the *train*
    # splits of SciFact and the man pages (evals/doc_representation.py) as the largest bonus that lowered no
    # mode on either; larger ones helped the man pages and hurt SciFact dense.
    head_bonus: float = 0.02

    @classmethod
    def from_settings(cls, settings: FusionSettings) -> FusionConfig:
        """From the settings object, or anything with the same fusion fields (a Dagster resource)."""
        return cls(
            rrf_k=settings.rrf_k,
            dense_weight=settings.dense_weight,
            bm25_weight=settings.bm25_weight,
            candidates=settings.fusion_candidates,
            method=settings.fusion_method,  # type: ignore[arg-type]
            head_bonus=settings.head_bonus,
        )

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> FusionConfig:
        values = json.loads(text)
        if values.get("method") not in ("rrf", "convex"):
            raise ValueError(f"not a recorded fusion: {text!r}")
        recorded = {name: values[name] for name in ("rrf_k", "dense_weight", "bm25_weight", "candidates", "method")}
        # a fusion recorded before the head bonus existed gets today's default bonus
        return cls(**recorded, head_bonus=values.get("head_bonus", cls.head_bonus))


@dataclass(frozen=True)
class RetrievedChunk:
    chunk_id: str
    doc_id: str
    title: str
    text: str
    source: str
    score: float
    start_char: int
    end_char: int
    tenant: str
    rerank_score: float | None = None  # the cross-encoder's, when a reranker reordered the list (`score` stays)
    # The cosine similarity of the chunk to the query (dense and hybrid retrieval; None for a chunk only BM25
    # found). Unlike BM25 and fused scores it is comparable across queries: the relevance threshold reads it.
    dense_score: float | None = None
    # Where each list placed the chunk (1 = first) and its BM25 score: what the console's playground shows
    # side by side. None for a list that did not find it (or was not searched).
    dense_rank: int | None = None
    bm25_rank: int | None = None
    bm25_score: float | None = None

    @classmethod
    def from_hit(cls, hit: Hit, score: float, dense_score: float | None = None) -> RetrievedChunk:
        fields = hit.fields
        return cls(
            chunk_id=hit.chunk_id,
            doc_id=fields["doc_id"],
            title=fields.get("title", ""),
            text=fields.get("text", ""),
            source=fields.get("source", ""),
            score=score,
            start_char=int(fields.get("start_char", 0)),
            end_char=int(fields.get("end_char", 0)),
            tenant=fields.get("tenant", ""),
            dense_score=dense_score,
        )


def filter_expression(filters: Mapping[str, object] | None, tenant: str | None) -> str:
    """The Milvus boolean expression for {field: value | [values]}; the tenant clause is always added."""
    return SearchFilter.parse(filters, tenant).expression()


def fuse_rrf(
    ranked: Mapping[str, Sequence[Hit]], weights: Mapping[str, float], k: int
) -> list[tuple[Hit, float, dict]]:
    """Weighted reciprocal rank fusion: score = Σ weight / (k + rank)."""
    scores: dict[str, float] = {}
    hits: dict[str, Hit] = {}
    ranks: dict[str, dict[str, int]] = {}
    for name, results in ranked.items():
        for rank, hit in enumerate(results, start=1):
            scores[hit.chunk_id] = scores.get(hit.chunk_id, 0.0) + weights.get(name, 1.0) / (k + rank)
            hits.setdefault(hit.chunk_id, hit)
            ranks.setdefault(hit.chunk_id, {})[name] = rank
    order = sorted(scores, key=lambda chunk: (-scores[chunk], chunk))
    return [(hits[chunk], scores[chunk], ranks[chunk]) for chunk in order]


def fuse_convex(ranked: Mapping[str, Sequence[Hit]], weights: Mapping[str, float]) -> list[tuple[Hit, float, dict]]:
    """Convex combination: score = Σ weight · (score - min) / (max - min) per list; absent from a list = 0.

    BM25 scores are taken by magnitude (Milvus reports them signed on some engines)."""
    scores: dict[str, float] = {}
    hits: dict[str, Hit] = {}
    ranks: dict[str, dict[str, int]] = {}
    for name, results in ranked.items():
        values = [abs(hit.score) if name == "bm25" else hit.score for hit in results]
        low, high = (min(values), max(values)) if values else (0.0, 0.0)
        span = high - low
        for rank, (hit, value) in enumerate(zip(results, values, strict=True), start=1):
            normalised = (value - low) / span if span > 0 else 1.0
            scores[hit.chunk_id] = scores.get(hit.chunk_id, 0.0) + weights.get(name, 1.0) * normalised
            hits.setdefault(hit.chunk_id, hit)
            ranks.setdefault(hit.chunk_id, {})[name] = rank
    order = sorted(scores, key=lambda chunk: (-scores[chunk], chunk))
    return [(hits[chunk], scores[chunk], ranks[chunk]) for chunk in order]


def with_head_bonus(hits: Sequence[Hit], bonus: float) -> list[Hit]:
    """Dense hits with `bonus` added to the score of each document's first chunk, best first (ties by chunk
    id, as the engines break them)."""
    if not bonus:
        return list(hits)
    boosted = [
        replace(hit, score=hit.score + bonus) if int(hit.fields.get("position", -1)) == 0 else hit for hit in hits
    ]
    return sorted(boosted, key=lambda hit: (-hit.score, hit.chunk_id))


def fuse(ranked: Mapping[str, Sequence[Hit]], fusion: FusionConfig) -> list[tuple[Hit, float, dict]]:
    """Fuse the dense and BM25 lists as `fusion` says (a convex combination by default), the dense list
    first given its head bonus."""
    if "dense" in ranked and fusion.head_bonus:
        ranked = {**ranked, "dense": with_head_bonus(ranked["dense"], fusion.head_bonus)}
    weights = {"dense": fusion.dense_weight, "bm25": fusion.bm25_weight}
    if fusion.method == "convex":
        return fuse_convex(ranked, weights)
    return fuse_rrf(ranked, weights, fusion.rrf_k)


class Retriever:
    """Dense, BM25 or hybrid retrieval on one searcher (one build, on whichever engine serves it).

    Dense and hybrid rank chunks. BM25 alone ranks documents by their whole-text entries (rag_core.chunking),
    which beat scoring a document by its best chunk, and shows each document as its best chunk."""

    def __init__(self, searcher: Searcher, fusion: FusionConfig | None = None) -> None:
        self.searcher = searcher
        self.fusion = fusion or FusionConfig()

    def retrieve(
        self,
        query: str,
        query_vector: Sequence[float] | None,
        top_k: int,
        mode: Mode = "hybrid",
        search_filter: SearchFilter | None = None,
        fusion: FusionConfig | None = None,
    ) -> list[RetrievedChunk]:
        fusion = fusion or self.fusion
        search_filter = search_filter or SearchFilter()
        chunks = search_filter.reading("chunks")
        if mode == "dense":
            # deeper than top_k when a bonus applies: a first chunk just below the cut may rise into it
            depth = max(top_k, fusion.candidates) if fusion.head_bonus else top_k
            hits = self.searcher.search_dense(query_vector, depth, chunks)
            similarity = {hit.chunk_id: hit.score for hit in hits}
            return [
                replace(RetrievedChunk.from_hit(hit, hit.score, similarity[hit.chunk_id]), dense_rank=rank)
                for rank, hit in enumerate(with_head_bonus(hits, fusion.head_bonus)[:top_k], start=1)
            ]
        if mode == "bm25":
            return [
                replace(RetrievedChunk.from_hit(hit, score), bm25_rank=rank, bm25_score=score)
                for rank, (hit, score) in enumerate(self.bm25_documents(query, top_k, search_filter), start=1)
            ]
        depth = max(top_k, fusion.candidates)
        ranked = {
            "dense": self.searcher.search_dense(query_vector, depth, chunks),
            "bm25": self.searcher.search_bm25(query, depth, chunks),
        }
        fused = fuse(ranked, fusion)
        similarity = {hit.chunk_id: hit.score for hit in ranked["dense"]}
        bm25 = {hit.chunk_id: abs(hit.score) for hit in ranked["bm25"]}
        return [
            replace(
                RetrievedChunk.from_hit(hit, score, similarity.get(hit.chunk_id)),
                dense_rank=ranks.get("dense"),
                bm25_rank=ranks.get("bm25"),
                bm25_score=bm25.get(hit.chunk_id),
            )
            for hit, score, ranks in fused[:top_k]
        ]

    def bm25_documents(self, query: str, top_k: int, search_filter: SearchFilter) -> list[tuple[Hit, float]]:
        """(each document's best chunk, the document's BM25 score), best document first. A build without
        document entries ranks its chunks. A document none of whose shown chunks holds a query term (they are
        disabled, or the term lies past the entry's size limit) is left out."""
        documents = self.searcher.search_bm25(query, top_k, search_filter.reading("documents"))
        if not documents:
            chunks = self.searcher.search_bm25(query, top_k, search_filter.reading("chunks"))
            return [(hit, abs(hit.score)) for hit in chunks]
        doc_ids = tuple(dict.fromkeys(hit.fields["doc_id"] for hit in documents))
        within = search_filter.reading("chunks").within_documents(doc_ids)
        best: dict[tuple[str, str], Hit] = {}
        for hit in self.searcher.search_bm25(query, PASSAGES_PER_DOCUMENT * len(doc_ids), within):
            best.setdefault(_document_key(hit), hit)
        return [(best[key], abs(hit.score)) for hit in documents if (key := _document_key(hit)) in best]


def _document_key(hit: Hit) -> tuple[str, str]:
    return hit.fields["source_key"], hit.fields["doc_id"]
