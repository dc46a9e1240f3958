"""The naive baseline's pieces without a model: documents rebuilt from their chunk rows, the report's naive and
margin rows, and which cause a shortfall names."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from rag_core.baseline import CHUNK_FIELDS, shortfall, whole_documents
from rag_core.chunking import ChunkingConfig, chunk_documents
from rag_core.documents import Document
from rag_core.embedding import Embedder
from rag_core.evaluation import ModeResult, RetrievalEvaluation, write_report
from rag_core.settings import bundled_model_dir

LONG = " ".join(f"Sentence number {i} talks about topic {i % 7} in some detail." for i in range(60))


def _chunk_rows(documents: list[Document]) -> pa.Table:
    tokenizer = Embedder(bundled_model_dir()).tokenizer
    chunks = chunk_documents(documents, tokenizer, ChunkingConfig(max_tokens=48, overlap_tokens=12))
    rows = [{name: getattr(chunk, name) for name in CHUNK_FIELDS if name != "source_key"} for chunk in chunks]
    return pa.Table.from_pylist([row | {"source_key": "key"} for row in reversed(rows)])  # order must not matter


def test_documents_are_rebuilt_from_overlapping_chunks() -> None:
    long = Document("long", "key", "default", "a.jsonl", "A title", LONG, "jsonl", 0.0, "h")
    short = Document("short", "key", "default", "a.jsonl", "", "One short line.", "jsonl", 0.0, "h")
    other_tenant = Document("theirs", "key", "acme", "a.jsonl", "", "Not ours.", "jsonl", 0.0, "h")
    rows = _chunk_rows([long, short, other_tenant])
    assert len(rows) > 5  # the long document really is cut into overlapping chunks

    rebuilt = {document.doc_id: document for document in whole_documents(rows, "default")}

    assert set(rebuilt) == {"long", "short"}
    # Chunks overlap and the chunker skips whitespace between them: the words come back once, in order.
    assert rebuilt["long"].text.split() == LONG.split()
    assert rebuilt["long"].search_text == f"A title\n{rebuilt['long'].text}"
    assert rebuilt["short"].search_text == "One short line."


def _evaluation(collection: str, ndcg: dict[str, float], baseline: RetrievalEvaluation | None = None):
    modes = {
        mode: ModeResult({"ndcg@10": value, "recall@100": value, "mrr@10": value}, {"ndcg@10": {"q1": value}})
        for mode, value in ndcg.items()
    }
    return RetrievalEvaluation("set/test", collection, 1, 0, modes, 0.1, baseline)


def test_report_has_naive_and_margin_rows(tmp_path: Path) -> None:
    naive = _evaluation("naive:build", {"dense": 0.5, "bm25": 0.4, "hybrid": 0.55})
    evaluation = _evaluation("build", {"dense": 0.6, "bm25": 0.3, "hybrid": 0.6}, naive)

    report = write_report({"served": evaluation}, tmp_path, "Retrieval evaluation of build").read_text()

    assert "| naive dense | 0.5000 | 0.5000 | 0.5000 |" in report
    assert "| margin dense | +0.1000 | +0.1000 | +0.1000 |" in report
    assert "| margin bm25 | -0.1000 |" in report
    assert "**Warning:**" in report and "likely cause" in report


@pytest.mark.parametrize(
    ("pipeline", "cause"),
    [
        ({"dense": 0.45, "bm25": 0.5, "hybrid": 0.6}, "chunking"),  # a single mode below: the chunks
        ({"dense": 0.6, "bm25": 0.5, "hybrid": 0.5}, "fusion"),  # only hybrid below: the fusion
        ({"dense": 0.5, "bm25": 0.4, "hybrid": 0.55}, None),  # equal is not a loss
    ],
)
def test_shortfall_names_the_likely_cause(pipeline: dict[str, float], cause: str | None) -> None:
    naive = _evaluation("naive:build", {"dense": 0.5, "bm25": 0.4, "hybrid": 0.55})

    found = shortfall(_evaluation("build", pipeline, naive))

    assert (found.cause if found else None) == cause
    if found:
        below = {mode for mode, value in pipeline.items() if value < naive.modes[mode].means["ndcg@10"]}
        assert set(found.margins) == below
        assert cause in found.message and "build" in found.message


def test_no_baseline_no_shortfall() -> None:
    assert shortfall(_evaluation("build", {"dense": 0.1})) is None
