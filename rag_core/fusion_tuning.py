"""Fusion weights learned from labels, never assumed. The served default (convex fusion of per-query min-max
normalised scores, `FusionConfig`) needs no labels; where judged queries exist — a dataset's *train* split,
feedback pairs, synthetic questions — `tune_fusion` searches a small grid of fusions on them and says which
one ranks best. It proposes; the gate (`rag_core.promotion.fusion_verdict`) decides, on other queries.

Each query's dense and BM25 lists are fetched once, at the deepest candidate count of the grid, and every
fusion of the grid is applied to the same lists: a grid of 20 costs one retrieval per query, not 20.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from rag_core.evaluation import EvalDataset, evaluate_engine, ir_metrics
from rag_core.promotion import FusionDecision, fusion_verdict
from rag_core.retrieval import FusionConfig, fuse
from rag_core.search.filters import SearchFilter

if TYPE_CHECKING:
    from rag_core.embedding import Embedder
    from rag_core.search.engines import Searcher

# Below this gain on the tuning queries a proposal is noise, not a better fusion.
MIN_TRAIN_GAIN = 0.005
DEPTH = 100  # documents per query that count (nDCG@10 reads 10 of them)


def fusion_grid(current: FusionConfig) -> list[FusionConfig]:
    """The fusions tried: convex with the dense weight from 0.2 to 0.8 (weights sum to 1), and RRF 1:1 —
    each at the current candidate count."""
    convex = [
        replace(current, method="convex", dense_weight=round(weight / 20, 2), bm25_weight=round(1 - weight / 20, 2))
        for weight in range(4, 17)
    ]
    return [*convex, replace(current, method="rrf", dense_weight=1.0, bm25_weight=1.0)]


def describe(fusion: FusionConfig) -> str:
    if fusion.method == "rrf":
        return f"rrf k={fusion.rrf_k} dense={fusion.dense_weight:g} bm25={fusion.bm25_weight:g}"
    return f"convex dense={fusion.dense_weight:g} bm25={fusion.bm25_weight:g}"


@dataclass(frozen=True)
class FusionTrial:
    fusion: FusionConfig
    ndcg_at_10: float


@dataclass(frozen=True)
class FusionTuning:
    """The grid on one set of judged queries: every trial, the current fusion's score and the best."""

    dataset: str
    queries: int
    current: FusionTrial
    trials: tuple[FusionTrial, ...]

    @property
    def best(self) -> FusionTrial:
        return max(self.trials, key=lambda trial: (trial.ndcg_at_10, trial.fusion == self.current.fusion))

    @property
    def gain(self) -> float:
        return round(self.best.ndcg_at_10 - self.current.ndcg_at_10, 4)

    def proposal(self, min_gain: float = MIN_TRAIN_GAIN) -> FusionConfig | None:
        """The fusion to put before the gate, or None when nothing beats the current one by `min_gain`."""
        return self.best.fusion if self.gain >= min_gain else None

    def table(self) -> str:
        lines = ["| fusion | nDCG@10 (tuning queries) |", "|---|---|"]
        for trial in sorted(self.trials, key=lambda trial: -trial.ndcg_at_10):
            marks = " (current)" if trial.fusion == self.current.fusion else ""
            marks += " (best)" if trial is self.best else ""
            lines.append(f"| {describe(trial.fusion)}{marks} | {trial.ndcg_at_10:.4f} |")
        return "\n".join(lines)


def tune_fusion(
    searcher: Searcher,
    embedder: Embedder,
    judged: EvalDataset,
    tenant: str,
    current: FusionConfig,
    grid: Sequence[FusionConfig] | None = None,
) -> FusionTuning:
    """Scores `current` and every fusion of `grid` (default: `fusion_grid(current)`) on `judged` — which
    must not be the split the gate evaluates on."""
    if not judged.queries:
        raise ValueError(f"{judged.name} has no judged queries to tune the fusion on")
    trials_of = list(dict.fromkeys([current, *(grid or fusion_grid(current))]))
    # As the query engine retrieves for an evaluation: top DEPTH, so each list holds max(DEPTH, candidates).
    depth = max(max(DEPTH, fusion.candidates) for fusion in trials_of)
    search_filter = SearchFilter(tenant)
    query_ids = list(judged.queries)
    vectors = embedder.encode([judged.queries[query_id] for query_id in query_ids])
    lists = {
        query_id: {
            "dense": searcher.search_dense(vector.tolist(), depth, search_filter),
            "bm25": searcher.search_bm25(judged.queries[query_id], depth, search_filter),
        }
        for query_id, vector in zip(query_ids, vectors, strict=True)
    }
    scores: dict[FusionConfig, float] = {}
    for fusion in trials_of:
        run: dict[str, dict[str, float]] = {}
        for query_id, ranked in lists.items():
            cut = {name: hits[: max(DEPTH, fusion.candidates)] for name, hits in ranked.items()}
            documents: dict[str, float] = {}
            for hit, score, _ranks in fuse(cut, fusion)[:DEPTH]:  # a document scores as its best chunk
                doc_id = hit.fields["doc_id"]
                documents[doc_id] = max(score, documents.get(doc_id, float("-inf")))
            run[query_id] = documents or {"__none__": 0.0}
        means, _ = ir_metrics(judged.qrels, run, ("ndcg@10",))
        scores[fusion] = means["ndcg@10"]
    trials = tuple(FusionTrial(fusion, scores[fusion]) for fusion in trials_of)
    return FusionTuning(judged.name, len(judged.queries), FusionTrial(current, scores[current]), trials)


@dataclass(frozen=True)
class FusionProposal:
    """A tuned fusion put before the gate: the grid on the tuning queries, the proposal's nDCG@10 on the
    gate's queries (None when nothing was proposed), and the verdict."""

    tuning: FusionTuning
    proposed_ndcg: float | None
    decision: FusionDecision


def propose_fusion(
    searcher: Searcher,
    embedder: Embedder,
    tuning_queries: EvalDataset,
    gate_queries: EvalDataset,
    tenant: str,
    current: FusionConfig,
    current_ndcg: float,
    min_gain: float = MIN_TRAIN_GAIN,
) -> FusionProposal:
    """Tune on `tuning_queries` (a train split, feedback, synthetic questions), then judge the proposal on
    `gate_queries` against `current_ndcg` — the current fusion's hybrid nDCG@10 on those same queries."""
    overlap = set(tuning_queries.queries) & set(gate_queries.queries)
    if overlap:
        raise ValueError(
            f"{len(overlap)} queries are in both the tuning and the evaluation set (e.g. {sorted(overlap)[0]}): "
            "tune on a train split, never on the split the gate evaluates"
        )
    tuning = tune_fusion(searcher, embedder, tuning_queries, tenant, current)
    proposal = tuning.proposal(min_gain)
    proposed_ndcg = None
    if proposal is not None:
        evaluated = evaluate_engine(searcher, proposal, embedder, gate_queries, ["hybrid"], tenant, "")
        proposed_ndcg = evaluated.modes["hybrid"].means["ndcg@10"]
    return FusionProposal(tuning, proposed_ndcg, fusion_verdict(proposal, tuning.gain, current_ndcg, proposed_ndcg))
