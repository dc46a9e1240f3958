"""Whether a reranker earns its place on a build, decided from labels, never assumed.

A cross-encoder that helps on one corpus can hurt on another (trained on scientific claims, ours lowered hybrid
on manual pages), and how much of the order it should own (`blend`'s weight) differs with the first stage. So a
reranker is judged against the build it would serve on, as that build serves (the query engine, its fusion):

1. on *tuning* queries the reranker never trained on (its held-out train queries), every weight from 0 (the
   retrieval order) to 1 (the cross-encoder alone) is scored, and the best is proposed;
2. on the *evaluation* queries (the split the promotion gate reads, never tuned on), the proposed weight faces
   the improvement rule of `rag_core.promotion.improvement_gate` against the same build without reranking:
   a mean nDCG@10 gain of at least `min_gain` whose paired bootstrap interval lies above zero.

Each mode (bm25, dense, hybrid) is judged on its own, with its own weight: a reranker that lifts hybrid can
lower BM25. The modes it passes in are recorded on the build with their weights (`BuildRecord.reranker`,
`rerank_weights`), and the API, which serves a build's recorded reranker by default (`RAG_RERANK_MODEL=auto`),
reranks those modes from its next poll, and only those. Each query's candidates and the cross-encoder's scores
are computed once per mode; every weight reorders the same lists.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from rag_core.chunking import search_text
from rag_core.evaluation import EvalDataset, document_run, ir_metrics, serving_engine
from rag_core.promotion import IMPROVEMENT, GateDecision, improvement_gate
from rag_core.query import Query
from rag_core.rerank import blend
from rag_core.retrieval import RetrievedChunk, SearchFilter

if TYPE_CHECKING:
    from rag_core.embedding import Embedder
    from rag_core.rerank import Reranker
    from rag_core.retrieval import FusionConfig
    from rag_core.search.engines import Searcher

WEIGHTS = tuple(round(0.1 * step, 1) for step in range(11))  # 0: retrieval's order … 1: the cross-encoder alone
MIN_RERANK_GAIN = 0.01  # nDCG@10: what a second stage that multiplies latency must add to be served
DEPTH = 100  # documents per query that count (nDCG@10 reads 10 of them)


@dataclass(frozen=True)
class Candidates:
    """One query's retrieved chunks as served, and the cross-encoder's logits for the first `candidates`."""

    chunks: list[RetrievedChunk]
    logits: np.ndarray

    def reordered(self, weight: float) -> list[RetrievedChunk]:
        """The list `QueryEngine` serves with the reranker at `weight`: the head reordered, the tail as it was."""
        head = self.chunks[: len(self.logits)]
        retrieval = np.array([chunk.score for chunk in head], dtype=np.float32)
        final = blend(self.logits, retrieval, weight)
        order = sorted(range(len(head)), key=lambda index: (-float(final[index]), index))
        return [head[index] for index in order] + self.chunks[len(head) :]


def score_candidates(
    searcher: Searcher,
    embedder: Embedder,
    fusion: FusionConfig,
    reranker: Reranker,
    judged: EvalDataset,
    mode: str,
    tenant: str,
    candidates: int,
) -> dict[str, Candidates]:
    """{query id: its candidates}: retrieval through the query engine the API serves with, then one
    cross-encoder pass over the first `candidates` chunks."""
    engine = serving_engine(searcher, embedder, fusion)
    search_filter = SearchFilter(tenant)
    query_ids = list(judged.queries)
    vectors = embedder.encode([judged.queries[query_id] for query_id in query_ids])
    scored: dict[str, Candidates] = {}
    for query_id, vector in zip(query_ids, vectors, strict=True):
        text = judged.queries[query_id]
        chunks = engine.retrieve(Query(text, DEPTH, mode, search_filter), vector.tolist())  # type: ignore[arg-type]
        head = chunks[:candidates]
        logits = reranker.scores(text, [search_text(chunk.title, chunk.text) for chunk in head])
        scored[query_id] = Candidates(chunks, logits)
    return scored


def ndcg_at_10(judged: EvalDataset, ranked: dict[str, list[RetrievedChunk]]) -> tuple[float, dict[str, float]]:
    """(mean, per query) nDCG@10 of ranked chunk lists; a document scores by its best chunk's position."""
    by_text = {judged.queries[query_id]: chunks for query_id, chunks in ranked.items()}

    def search(text: str) -> list[tuple[str, float]]:
        chunks = by_text[text]
        return [(chunk.doc_id, float(len(chunks) - rank)) for rank, chunk in enumerate(chunks)]

    means, per_query = ir_metrics(judged.qrels, document_run(judged, search, DEPTH), ("ndcg@10",))
    return means["ndcg@10"], per_query["ndcg@10"]


def tune_weight(judged: EvalDataset, scored: dict[str, Candidates], weights: Sequence[float] = WEIGHTS) -> dict:
    """{weight: nDCG@10 on `judged`} for each weight (0 is the retrieval order)."""
    return {
        weight: ndcg_at_10(judged, {query_id: c.reordered(weight) for query_id, c in scored.items()})[0]
        for weight in weights
    }


@dataclass(frozen=True)
class RerankVerdict:
    """The weight picked on the tuning queries, and the improvement gate on the evaluation queries."""

    mode: str
    tuning_queries: int
    tuning: dict[float, float]  # weight → nDCG@10 on the tuning queries
    weight: float
    decision: GateDecision  # candidate: with the reranker at `weight`; served: the same build without

    @property
    def adopted(self) -> bool:
        return self.decision.passed

    @property
    def without(self) -> float:
        return float(self.decision.baseline_ndcg or 0.0)

    @property
    def with_reranker(self) -> float:
        return self.decision.candidate_ndcg

    @property
    def reason(self) -> str:
        verdict = "adopted" if self.adopted else "not adopted"
        picked = f"weight {self.weight:g} picked on {self.tuning_queries} tuning queries"
        return f"{verdict}: {picked}; {self.mode}: {self.decision.reason.replace('the served build', 'no reranking')}"

    def table(self) -> str:
        lines = ["| weight | nDCG@10 (tuning queries) |", "|---|---|"]
        for weight, ndcg in self.tuning.items():
            marks = " (retrieval order)" if weight == 0 else " (cross-encoder alone)" if weight == 1 else ""
            marks += " (picked)" if weight == self.weight else ""
            lines.append(f"| {weight:g}{marks} | {ndcg:.4f} |")
        return "\n".join(lines)


@dataclass(frozen=True)
class RerankerGate:
    """One reranker before one build: the build as served (its searcher, query embedder and fusion), the
    queries the weight is picked on (never trained on) and the queries the gate reads (never tuned on)."""

    searcher: Searcher
    embedder: Embedder
    fusion: FusionConfig
    reranker: Reranker
    tuning_queries: EvalDataset
    gate_queries: EvalDataset
    tenant: str
    candidates: int
    min_gain: float = MIN_RERANK_GAIN
    weights: Sequence[float] = WEIGHTS

    def _candidates(self, judged: EvalDataset, mode: str) -> dict[str, Candidates]:
        args = (self.searcher, self.embedder, self.fusion, self.reranker, judged, mode, self.tenant, self.candidates)
        return score_candidates(*args)

    def verdict(self, mode: str = "hybrid") -> RerankVerdict:
        """Pick the blend weight on the tuning queries, then hold the build reranked at that weight to the
        improvement rule against itself unreranked on the gate's queries, in `mode`."""
        overlap = set(self.tuning_queries.queries) & set(self.gate_queries.queries)
        if overlap:
            raise ValueError(
                f"{len(overlap)} queries are in both the tuning and the evaluation set (e.g. {sorted(overlap)[0]}): "
                "pick the weight on held-out train queries, never on the split the gate evaluates"
            )
        if not self.tuning_queries.queries:
            raise ValueError(f"{self.tuning_queries.name} has no judged queries to pick the reranker's weight on")
        tuning = tune_weight(self.tuning_queries, self._candidates(self.tuning_queries, mode), self.weights)
        # The best weight; on a tie the smaller one (less of the order owned by the slower, less proven stage).
        weight = max(tuning, key=lambda w: (tuning[w], -w))
        gate = self._candidates(self.gate_queries, mode)
        without, without_scores = ndcg_at_10(self.gate_queries, {query_id: c.chunks for query_id, c in gate.items()})
        reranked, reranked_scores = ndcg_at_10(self.gate_queries, {q: c.reordered(weight) for q, c in gate.items()})
        if weight == 0:  # the retrieval order won on the tuning queries: nothing to put before the gate
            reason = "the retrieval order ranked best on the tuning queries"
            decision = GateDecision(False, reranked, without, 0.0, reason, IMPROVEMENT, self.min_gain)
        else:
            decision = improvement_gate(reranked, without, reranked_scores, without_scores, self.min_gain)
        return RerankVerdict(mode, len(self.tuning_queries.queries), tuning, weight, decision)

    def verdicts(self, modes: Sequence[str]) -> dict[str, RerankVerdict]:
        """A verdict in each of `modes`: each picks its own weight and faces the gate on its own."""
        return {mode: self.verdict(mode) for mode in modes}


def adopted_modes(verdicts: dict[str, RerankVerdict]) -> dict[str, float]:
    """{mode: weight} of the modes a reranker passed the gate in: what `adopt_reranker` records."""
    return {mode: verdict.weight for mode, verdict in verdicts.items() if verdict.adopted}


def verdicts_table(verdicts: dict[str, RerankVerdict]) -> str:
    """One row per mode: the weight, nDCG@10 on the tuning queries at each weight, and the gate's outcome."""
    weights = list(WEIGHTS)
    lines = [
        "| mode | " + " | ".join(f"tuning, w={weight:g}" for weight in weights)
        + " | weight | evaluation, without | evaluation, with | adopted |",
        "|---" * (len(weights) + 5) + "|",
    ]
    for mode, verdict in verdicts.items():
        tuned = " | ".join(f"{verdict.tuning.get(weight, float('nan')):.4f}" for weight in weights)
        lines.append(
            f"| {mode} | {tuned} | {verdict.weight:g} | {verdict.without:.4f} | {verdict.with_reranker:.4f} | "
            f"{'yes' if verdict.adopted else 'no'} |"
        )
    return "\n".join(lines)
