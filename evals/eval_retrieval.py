"""Retrieval quality of a built index on a BEIR-layout dataset, per mode (bm25, dense, hybrid), through the
query engine the API serves with (its fusion: the one the gate adopted for the build, or the settings').

Run: .venv/bin/python evals/eval_retrieval.py --data-dir /tmp/scifact-index [--split test]
Prints nDCG@10, recall@10/100, MRR@10 and MAP@100 per mode (rag_core.evaluation.ir_metrics), documents scored
by their best chunk.
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
    parser.add_argument("--collection", default="", help="a build other than the served one (e.g. a candidate)")
    parser.add_argument(
        "--engines", nargs="+", default=["memory", "milvus"], help="search engines to compare on the same build"
    )
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    warnings.filterwarnings("ignore")

    import contextlib

    from evals.served_build import open_build
    from rag_core.evaluation import EvalDataset, document_run, ir_metrics
    from rag_core.query import Query, QueryEngine
    from rag_core.retrieval import SearchFilter
    from rag_core.search.engines import MilvusEngine

    build = open_build(args.data_dir, args.collection)
    settings, connection, collection, embedder = build.settings, build.connection, build.collection, build.embedder
    dataset = EvalDataset.load(args.dataset, args.split)
    vectors = dict(zip(dataset.queries, embedder.encode(list(dataset.queries.values())), strict=True))
    by_text = {text: vectors[query_id] for query_id, text in dataset.queries.items()}
    search_filter = SearchFilter(settings.default_tenant)
    fusion = build.fusion  # what the API serves
    print(f"{collection} ({embedder.version})")
    print(f"{dataset.name}: {len(dataset.queries)} queries, fusion {fusion}\n")
    print("| engine | mode | " + " | ".join(("nDCG@10", "recall@10", "recall@100", "MRR@10", "MAP@100")) + " |")
    print("|---|---|---|---|---|---|---|")
    for engine_name in args.engines:
        with contextlib.ExitStack() as stack:
            if engine_name == "memory":
                searcher = build.searcher
            else:
                searcher = MilvusEngine(stack.enter_context(connection.store())).searcher(collection)
            engine = QueryEngine(searcher, by_text.__getitem__, fusion)
            for mode in args.modes:
                run = document_run(
                    dataset,
                    lambda text, mode=mode, engine=engine: [
                        (chunk.doc_id, chunk.score) for chunk in engine.retrieve(Query(text, 100, mode, search_filter))
                    ],
                )
                means, _ = ir_metrics(dataset.qrels, run)
                print(f"| {engine_name} | {mode} | " + " | ".join(f"{value:.4f}" for value in means.values()) + " |")


if __name__ == "__main__":
    main()
