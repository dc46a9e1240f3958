"""Retrieval quality of a built index on a BEIR-layout dataset, per mode (bm25, dense, hybrid).

Run: .venv/bin/python evals/eval_retrieval.py --data-dir /tmp/scifact-index [--split test]
Prints nDCG@10, recall@10/100, MRR@10 and MAP@100 per mode (ranx), documents scored by their best chunk.
"""

from __future__ import annotations

import argparse
import os
import warnings
from pathlib import Path

DATASET = Path(__file__).parent / "datasets" / "scifact"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, required=True, help="folder of a build (bench_indexing --keep)")
    parser.add_argument("--dataset", type=Path, default=DATASET)
    parser.add_argument("--split", default="test")
    parser.add_argument("--modes", nargs="+", default=["bm25", "dense", "hybrid"])
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    warnings.filterwarnings("ignore")

    from rag_core.embedding import Embedder
    from rag_core.evaluation import EvalDataset, document_run, ir_metrics
    from rag_core.retrieval import Retriever, filter_expression
    from rag_core.settings import Settings
    from rag_core.store import MilvusStore, milvus_client

    work = args.data_dir.resolve()
    settings = Settings(data_dir=work / "data", documents_dir=work / "documents", dagster_home=work / "dagster")
    dataset = EvalDataset.load(args.dataset, args.split)
    embedder = Embedder(settings.resolved_model_dir)
    vectors = dict(zip(dataset.queries, embedder.encode(list(dataset.queries.values())), strict=True))
    by_text = {text: vectors[query_id] for query_id, text in dataset.queries.items()}
    expression = filter_expression({}, settings.default_tenant)
    print(f"{dataset.name}: {len(dataset.queries)} queries\n")
    print("| mode | " + " | ".join(("nDCG@10", "recall@10", "recall@100", "MRR@10", "MAP@100")) + " |")
    print("|---|---|---|---|---|---|")
    with milvus_client(settings.resolved_milvus_uri) as client:
        store = MilvusStore(client, settings.collection_alias)
        retriever = Retriever(store, store.alias_target())
        for mode in args.modes:
            run = document_run(
                dataset,
                lambda text, mode=mode: [
                    (chunk.doc_id, chunk.score)
                    for chunk in retriever.retrieve(text, by_text[text], 100, mode, expression)
                ],
            )
            means, _ = ir_metrics(dataset.qrels, run)
            print(f"| {mode} | " + " | ".join(f"{value:.4f}" for value in means.values()) + " |")


if __name__ == "__main__":
    main()
