"""What a collection records about itself, stored as its Milvus collection properties: the build it holds
(model, chunking, schema), how its rows change (index version, the row count a one-pass build promises),
and its history (status, evaluation, promotion, retirement, rejection, rollback).

Every process (indexing runs, serving replicas, the CLI) reads the same record; this module is the only
place that spells a property key.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from rag_core.search.analyzer import STANDARD

# The property key of each BuildRecord field.
_KEYS = {
    "embedding_model": "rag.embedding_model",
    "embedding_version": "rag.embedding_version",
    "model_reference": "rag.embedding_model_uri",
    "dimension": "rag.dimension",
    "chunking": "rag.chunking",
    "chunk_max_tokens": "rag.chunk_max_tokens",
    "chunk_overlap_tokens": "rag.chunk_overlap_tokens",
    "document_entries": "rag.document_entries",
    "bm25_analyzer": "rag.bm25_analyzer",
    "schema_version": "rag.schema_version",
    "created_at": "rag.created_at",
    "index_version": "rag.index_version",
    "expected_rows": "rag.expected_rows",
    "status": "rag.status",
    "eval_ndcg_at_10": "rag.eval.ndcg_at_10",
    "promoted_at": "rag.promoted_at",
    "promoted_from": "rag.promoted_from",
    "retired_at": "rag.retired_at",
    "rejected_reason": "rag.rejected_reason",
    "rolled_back_at": "rag.rolled_back_at",
    "fusion": "rag.fusion",
    "reranker": "rag.reranker",
    "rerank_weights": "rag.rerank_weights",
}


@dataclass(frozen=True)
class BuildRecord:
    """A collection's properties, typed. Empty strings and None mean "not recorded"."""

    embedding_model: str = ""
    embedding_version: str = ""  # name@weights-hash[+backend]: what the vectors were embedded with
    model_reference: str = ""  # how any process loads the model again (rag_core.models)
    dimension: int | None = None
    chunking: str = ""
    chunk_max_tokens: int | None = None
    chunk_overlap_tokens: int | None = None
    document_entries: bool | None = None  # None: a build from before document entries (it has none)
    bm25_analyzer: str = ""  # "": a build from before the choice (its BM25 field holds the text as written)
    schema_version: str = ""
    created_at: str = ""
    index_version: str = "0"  # changes whenever the rows change; caches key on it
    # A build made in one pass (candidate_index) promises this many rows until the catalog tracks it.
    expected_rows: int | None = None
    status: str = ""
    eval_ndcg_at_10: float | None = None
    promoted_at: str = ""
    promoted_from: str = ""
    retired_at: str = ""
    rejected_reason: str = ""
    rolled_back_at: str = ""
    # The hybrid fusion this build serves with, when the gate adopted a tuned one (FusionConfig.to_json);
    # "" = the deployment's settings.
    fusion: str = ""
    # The reranker this build serves with (a model reference) and, as JSON {mode: blend weight}, the modes the
    # reranker gate (rag_core.rerank_tuning) proved it in on this build; "" = none.
    reranker: str = ""
    rerank_weights: str = ""

    @property
    def analyzer(self) -> str:
        """The BM25 analyzer the build's rows were written with, and its queries are analyzed by."""
        return self.bm25_analyzer or STANDARD

    def to_properties(self) -> dict[str, str]:
        """Every recorded field as a collection property."""
        values = {field.name: getattr(self, field.name) for field in fields(self)}
        return changes(**{name: value for name, value in values.items() if value not in ("", None)})

    @classmethod
    def from_properties(cls, properties: dict[str, str]) -> BuildRecord:
        values: dict[str, object] = {}
        for field in fields(cls):
            text = properties.get(_KEYS[field.name], "")
            if not text:
                continue
            if field.name in ("dimension", "chunk_max_tokens", "chunk_overlap_tokens", "expected_rows"):
                values[field.name] = int(text)
            elif field.name == "eval_ndcg_at_10":
                values[field.name] = float(text)
            elif field.name == "document_entries":
                values[field.name] = text == "true"
            else:
                values[field.name] = text
        return cls(**values)


def changes(**values: object) -> dict[str, str]:
    """The properties that set these fields of a record (None or "" clears one), for a partial update."""
    unknown = sorted(set(values) - set(_KEYS))
    if unknown:
        raise TypeError(f"{', '.join(unknown)}: not fields of BuildRecord ({', '.join(_KEYS)})")
    return {_KEYS[name]: _text(value) for name, value in values.items()}


def _text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6f}"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
