"""The query engine: retrieve (and optionally rerank), then answer. The API serves this path and the
evaluations measure it (`rag_eval_report`, `evals/eval_retrieval.py`, `evals/bench_rerank.py`), so what is
measured is what is served.

`Query` carries what a caller may choose, with the served defaults; `QueryEngine` holds what the deployment
decided once (the searcher of one build, how queries are embedded, the fusion, the reranker and the answerer).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from rag_core.generation import Answer, LLMConfig, generate, stream
from rag_core.retrieval import FusionConfig, Mode, RetrievedChunk, Retriever
from rag_core.search.filters import SearchFilter

if TYPE_CHECKING:
    from rag_core.rerank import Reranker
    from rag_core.search.engines import Searcher

DEFAULT_TOP_K = 5
DEFAULT_RERANK_CANDIDATES = 30  # chunks the reranker reads per query: each costs a cross-encoder pass
# The cross-encoder's share of the reranked order (rag_core.rerank.blend): picked on 80 held-out SciFact *train*
# claims reranking the base build's hybrid candidates (evals/bench_rerank.py), where the cross-encoder alone
# (1.0) ranked below hybrid without it and an even blend ranked best.
DEFAULT_RERANK_WEIGHT = 0.5
AUTO_RERANKER = "auto"  # RAG_RERANK_MODEL: the reranker the served build records (rag_core.rerank_tuning)
NO_RERANKER = ("", "off", "none")
DEFAULT_MODE: Mode = "hybrid"


@dataclass(frozen=True)
class RerankPolicy:
    """RAG_RERANK_MODEL, read once: `named` reranks every build with that model; otherwise `auto` serves the
    reranker the gate recorded on each build (rag_core.promotion.served_reranker), and neither means never."""

    named: str = ""
    auto: bool = False

    @classmethod
    def parse(cls, setting: str) -> RerankPolicy:
        choice = setting.strip()
        if choice.lower() in NO_RERANKER:
            return cls()
        if choice.lower() == AUTO_RERANKER:
            return cls(auto=True)
        return cls(named=choice)


@dataclass(frozen=True)
class Query:
    text: str
    top_k: int = DEFAULT_TOP_K
    mode: Mode = DEFAULT_MODE
    search_filter: SearchFilter = field(default_factory=SearchFilter)
    fusion: FusionConfig | None = None  # None: the engine's (the deployment's)


def _untimed(stage: str) -> AbstractContextManager[None]:
    return nullcontext()


class QueryEngine:
    """Retrieval over one build's searcher, then an answer from what was retrieved.

    `encode` embeds a query with the model the build was made with (the API caches and batches it).
    `llm` answers; an engine that only retrieves (a retrieval evaluation) has none. With a `reranker`, the
    first `rerank_candidates` retrieved chunks are reordered by it before the list is cut to `top_k`.
    `stage(name)` times the `search`, `rerank` and `generate` stages when the caller keeps timings."""

    def __init__(
        self,
        searcher: Searcher,
        encode: Callable[[str], Sequence[float]],
        fusion: FusionConfig,
        llm: LLMConfig | None = None,
        stage: Callable[[str], AbstractContextManager[object]] = _untimed,
        reranker: Reranker | None = None,
        rerank_candidates: int = DEFAULT_RERANK_CANDIDATES,
    ) -> None:
        self.retriever = Retriever(searcher, fusion)
        self.encode = encode
        self.llm = llm
        self.stage = stage
        self.reranker = reranker
        self.rerank_candidates = rerank_candidates

    def retrieve(self, query: Query, vector: Sequence[float] | None = None) -> list[RetrievedChunk]:
        """The query's chunks, best first. `vector`: its embedding, when the caller encoded it already (an
        evaluation encodes all its queries in one batch)."""
        if vector is None and query.mode != "bm25":
            vector = self.encode(query.text)
        weight = self.reranker.weight_for(query.mode) if self.reranker is not None else None
        depth = query.top_k if weight is None else max(query.top_k, self.rerank_candidates)
        with self.stage("search"):
            chunks = self.retriever.retrieve(query.text, vector, depth, query.mode, query.search_filter, query.fusion)
        if self.reranker is None or weight is None:  # none, or not proven in this mode
            return chunks
        # Only the candidates are reordered; a top_k deeper than them keeps retrieval's order below them.
        with self.stage("rerank"):
            reranked = self.reranker.run(query.text, chunks[: self.rerank_candidates], weight)
        return (reranked + chunks[self.rerank_candidates :])[: query.top_k]

    def answer(self, question: str, chunks: Sequence[RetrievedChunk]) -> Answer:
        with self.stage("generate"):
            return generate(question, chunks, self._llm())

    def stream(self, question: str, chunks: Sequence[RetrievedChunk]) -> Iterator[tuple[str, Answer | None]]:
        """(text delta, None)… then ('', the final Answer), like `answer` but in pieces."""
        llm = self._llm()
        with self.stage("generate"):
            yield from stream(question, chunks, llm)

    def _llm(self) -> LLMConfig:
        if self.llm is None:
            raise ValueError("this query engine only retrieves — build it with llm=settings.llm() to answer")
        return self.llm

    def run(self, query: Query) -> tuple[list[RetrievedChunk], Answer]:
        chunks = self.retrieve(query)
        return chunks, self.answer(query.text, chunks)
