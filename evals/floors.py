"""The outside reference the search benchmarks measure against: faiss (an HNSW graph, searched directly, no
filter) and bm25s over the same rows, fused by a plain convex combination of min-max-normalised scores."""

from __future__ import annotations

import numpy as np


class SearchFloor:
    def __init__(self, vectors: np.ndarray, texts: list[str], graph=None) -> None:
        import bm25s
        import faiss

        from rag_core.search.analyzer import BM25_B, BM25_K1
        from rag_core.search.memory import HNSW_EF_CONSTRUCTION, HNSW_M

        if graph is None:  # the engine searches small builds exactly; the floor still gets its graph
            graph = faiss.IndexHNSWFlat(vectors.shape[1], HNSW_M, faiss.METRIC_INNER_PRODUCT)
            graph.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
            graph.add(np.ascontiguousarray(vectors, dtype=np.float32))
        self.graph = graph
        self.params = faiss.SearchParametersHNSW(efSearch=100)
        self.bm25s = bm25s
        self.lexical = bm25s.BM25(k1=BM25_K1, b=BM25_B, method="lucene")
        if texts:  # no texts: a dense-only floor
            self.lexical.index(bm25s.tokenize(texts, stopwords=None, show_progress=False), show_progress=False)

    def tokenize(self, query: str):
        return self.bm25s.tokenize([query], stopwords=None, show_progress=False)

    def dense(self, vector: np.ndarray, limit: int = 10) -> tuple[np.ndarray, np.ndarray]:
        scores, rows = self.graph.search(np.asarray(vector, np.float32).reshape(1, -1), limit, params=self.params)
        return rows[0], scores[0]

    def bm25(self, tokens, limit: int = 10) -> tuple[np.ndarray, np.ndarray]:
        rows, scores = self.lexical.retrieve(tokens, k=limit, show_progress=False, n_threads=1)
        return rows[0], scores[0]

    def hybrid(self, vector: np.ndarray, tokens, limit: int = 10, candidates: int = 100) -> list[int]:
        fused: dict[int, float] = {}
        for weight, (rows, scores) in ((0.55, self.dense(vector, candidates)), (0.45, self.bm25(tokens, candidates))):
            low, high = scores.min(), scores.max()
            normalised = (scores - low) / (high - low) if high > low else np.ones_like(scores)
            for row, score in zip(rows.tolist(), normalised.tolist(), strict=True):
                fused[row] = fused.get(row, 0.0) + weight * score
        return sorted(fused, key=fused.__getitem__, reverse=True)[:limit]
