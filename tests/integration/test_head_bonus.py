"""The head bonus (FusionConfig.head_bonus): on both engines, dense and hybrid retrieval lift a document's first
chunk over a passage of another document that is only slightly closer to the query; the chunk keeps its own
cosine as `dense_score`, and a bonus of 0 leaves the engine's order."""

from __future__ import annotations

import numpy as np
import pytest

from rag_core.retrieval import FusionConfig, Retriever
from rag_core.search.analyzer import STANDARD, analyzed
from rag_core.search.filters import SearchFilter
from tests.support.search_index import DIMENSION, Index

QUERY = np.eye(DIMENSION, dtype=np.float32)[0]


def vector_at(cosine: float, axis: int) -> list[float]:
    """A unit vector whose cosine to QUERY is `cosine`, the rest of it along `axis`."""
    vector = np.zeros(DIMENSION, dtype=np.float32)
    vector[0], vector[axis] = cosine, np.sqrt(1 - cosine**2)
    return vector.tolist()


def row(doc_id: str, position: int, cosine: float, axis: int) -> dict:
    text = f"{doc_id} passage {position} about budgets"
    return {
        "chunk_id": f"{doc_id}#{position}",
        "doc_id": doc_id,
        "source_key": "notes",
        "tenant": "default",
        "source": "notes.jsonl",
        "title": doc_id,
        "text": text,
        "search_text": analyzed(text, STANDARD),
        "position": position,
        "start_char": 0,
        "end_char": len(text),
        "dense": vector_at(cosine, axis),
        "metadata": {},
    }


ROWS = [
    row("long", 0, 0.20, 1),
    row("long", 3, 0.61, 2),  # a passage deep in a long document, just closer than...
    row("short", 0, 0.60, 3),  # ...a short document's one chunk
    *(row(f"other-{i}", 0, 0.30 - 0.01 * i, 4 + i) for i in range(8)),
]


@pytest.fixture(scope="module")
def index(tmp_path_factory) -> Index:
    built = Index(tmp_path_factory.mktemp("head-bonus"))
    built.write(ROWS)
    return built


def dense(searcher, fusion: FusionConfig, top_k: int = 3):
    return Retriever(searcher, fusion).retrieve("budgets", QUERY.tolist(), top_k, "dense", SearchFilter("default"))


@pytest.mark.parametrize("engine", ["memory", "milvus"])
def test_dense_retrieval_lifts_a_first_chunk_over_a_slightly_closer_passage(index, engine):
    def check(searcher) -> None:
        lifted = dense(searcher, FusionConfig(head_bonus=0.02))
        assert [chunk.chunk_id for chunk in lifted[:2]] == ["short#0", "long#3"]
        assert lifted[0].score == pytest.approx(0.62, abs=1e-4)  # ranked by the cosine + the bonus
        assert lifted[0].dense_score == pytest.approx(0.60, abs=1e-4)  # the cosine itself: thresholds read it
        assert [chunk.chunk_id for chunk in dense(searcher, FusionConfig(head_bonus=0.0))[:2]] == ["long#3", "short#0"]
        # a bonus never lifts a first chunk past a passage more than the bonus closer
        assert dense(searcher, FusionConfig(head_bonus=0.005))[0].chunk_id == "long#3"
        hybrid = Retriever(searcher, FusionConfig(head_bonus=0.02, dense_weight=1.0, bm25_weight=0.0)).retrieve(
            "budgets", QUERY.tolist(), 3, "hybrid", SearchFilter("default")
        )
        assert hybrid[0].chunk_id == "short#0" and hybrid[0].dense_score == pytest.approx(0.60, abs=1e-4)

    if engine == "memory":
        check(index.memory.served().searcher)
    else:
        with index.milvus() as milvus:
            check(milvus.served().searcher)
