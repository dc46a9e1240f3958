"""The naive baseline on a corpus built so that chunking hurts, through the real retrieval_eval_report asset:
Milvus Lite, the in-memory engine, the bundled MiniLM, a real MLflow store, a Dagster instance on disk.

Each query names four rare words. Its relevant document holds all four, one per chunk, far apart; two
distractors of the same length hold two of them side by side. Scored by its best chunk the relevant document
ranks third in BM25 (a distractor chunk matches two words, none of its chunks more than one); scored whole it
ranks first. So a build without document entries must lose to the naive baseline in BM25, and say that chunking
is the likely cause; a build with them (the default) ranks documents whole in BM25 and does not lose there.
"""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import pytest

from rag_core.tracking import Tracker
from tests.support.evaluation import index_and_evaluate
from tests.support.settings import embedded_settings

pytestmark = pytest.mark.slow

QUERY_WORDS = [
    ["aardvark", "zeppelin", "quasar", "marzipan"],
    ["walrus", "origami", "tornado", "saffron"],
    ["pelican", "volcano", "harpsichord", "cinnamon"],
]
FILLER = (
    "the team met again on monday and talked about the plan for next week while the rain kept falling "
    "over the old town so everyone stayed inside to read write and rest before going home late"
).split()


def _filler(rng: random.Random, words: int) -> str:
    picked = [rng.choice(FILLER) for _ in range(words)]
    return " ".join(" ".join(picked[i : i + 12]) + "." for i in range(0, words, 12))


def write_chunking_hurts_corpus(root: Path) -> tuple[Path, Path]:
    """(a documents folder with one corpus.jsonl, a BEIR-layout dataset of its queries and test qrels)."""
    rng = random.Random(11)
    records, queries, qrels = [], {}, []
    for group, words in enumerate(QUERY_WORDS):
        spread = " ".join(f"{_filler(rng, 84)} The {word} was noted." for word in words) + " " + _filler(rng, 84)
        records.append({"_id": f"relevant-{group}", "title": f"Field notes {group}a", "text": spread})
        for half, pair in enumerate((words[:2], words[2:])):
            together = f"{_filler(rng, 180)} The {pair[0]} and the {pair[1]} were noted. {_filler(rng, 216)}"
            title = f"Field notes {group}{'bc'[half]}"
            records.append({"_id": f"distractor-{group}-{half}", "title": title, "text": together})
        queries[f"q{group}"] = " ".join(words)
        qrels.append((f"q{group}", f"relevant-{group}", 1))
    documents, dataset = root / "documents", root / "dataset"
    documents.mkdir(parents=True)
    (documents / "corpus.jsonl").write_text("".join(json.dumps(record) + "\n" for record in records))
    (dataset / "qrels").mkdir(parents=True)
    lines = [json.dumps({"_id": query_id, "text": text}) + "\n" for query_id, text in queries.items()]
    (dataset / "queries.jsonl").write_text("".join(lines))
    with (dataset / "qrels" / "test.tsv").open("w", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t")
        writer.writerow(["query-id", "corpus-id", "score"])
        writer.writerows(qrels)
    return documents, dataset


def chunked_settings(root: Path, document_entries: bool):
    documents, dataset = write_chunking_hurts_corpus(root)
    return embedded_settings(
        root, documents, collection_alias="rag_chunks", eval_dataset_dir=dataset, chunk_max_tokens=64,
        chunk_overlap_tokens=8, document_entries=document_entries,
    )


def test_report_shows_the_naive_baseline_and_warns_when_chunking_loses(tmp_path: Path) -> None:
    settings = chunked_settings(tmp_path, document_entries=False)
    metadata, logged = index_and_evaluate(settings)
    warnings = [message for message in logged if "naive baseline" in message]

    # The chunked build really loses in BM25: each relevant document ranks first whole, third by best chunk.
    assert metadata["served_naive_bm25_ndcg_at_10"] == 1.0
    assert metadata["served_bm25_ndcg_at_10"] == pytest.approx(0.5)
    assert metadata["served_margin_bm25_ndcg_at_10"] == pytest.approx(-0.5)
    for mode in ("dense", "bm25", "hybrid"):
        for metric in ("ndcg_at_10", "recall_at_100", "mrr_at_10"):
            assert metadata[f"served_margin_{mode}_{metric}"] == pytest.approx(
                metadata[f"served_{mode}_{metric}"] - metadata[f"served_naive_{mode}_{metric}"], abs=1e-4
            )
    # The warning, in the run's log and in the metadata, names chunking.
    assert "bm25" in metadata["below_naive_baseline"]["served"]["modes"]
    assert metadata["below_naive_baseline"]["served"]["cause"] == "chunking"
    assert "chunking" in metadata["naive_baseline_warning"]
    assert warnings and "chunking" in warnings[0]
    # The report has the naive and margin rows; MLflow has the margin per mode.
    report = Path(metadata["report_path"]).read_text()
    assert "| naive bm25 | " in report and "| margin bm25 | -0.5000 |" in report
    assert "**Warning:**" in report
    runs = Tracker.from_settings(settings).runs("retrieval")
    (bm25_run,) = [run for run in runs if run.data.params["mode"] == "bm25"]
    assert bm25_run.data.metrics["naive_bm25_ndcg_at_10"] == 1.0
    assert bm25_run.data.metrics["margin_bm25_ndcg_at_10"] == pytest.approx(-0.5)


def test_document_entries_rank_bm25_whole_and_no_longer_lose_to_the_naive_baseline(tmp_path: Path) -> None:
    metadata, _logged = index_and_evaluate(chunked_settings(tmp_path, document_entries=True))
    assert metadata["served_naive_bm25_ndcg_at_10"] == 1.0
    assert metadata["served_bm25_ndcg_at_10"] == 1.0 and metadata["served_margin_bm25_ndcg_at_10"] == 0.0
    assert "bm25" not in metadata.get("below_naive_baseline", {}).get("served", {}).get("modes", [])
