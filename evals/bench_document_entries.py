"""What document entries (rag_core.chunking) cost per query: the same corpus built with and without them, each
served by the in-memory engine through the query engine the API serves with, the same judged queries one at a
time, interleaved between the two builds so load on the machine falls on both alike.

Prints p50 / p95 per mode for each build and the p50 ratio (with / without), and nDCG@10 beside it.

Run: .venv/bin/python evals/bench_document_entries.py --with /tmp/scifact-docs --without /tmp/scifact-index
     (two builds of one corpus: evals/bench_indexing.py --keep DIR [--build-only], one with
     RAG_DOCUMENT_ENTRIES=false or from before entries)
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from pathlib import Path

import numpy as np

DATASET = Path(__file__).parent / "datasets" / "scifact"
MODES = ("bm25", "dense", "hybrid")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--with", dest="with_entries", type=Path, required=True, help="a build with entries")
    parser.add_argument("--without", type=Path, required=True, help="the same corpus built without them")
    parser.add_argument("--dataset", type=Path, default=DATASET)
    parser.add_argument("--split", default="test")
    parser.add_argument("--rounds", type=int, default=3, help="passes over the queries (the first warms up)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    warnings.filterwarnings("ignore")

    from evals.served_build import open_build
    from rag_core.evaluation import EvalDataset, document_run, ir_metrics, serving_engine
    from rag_core.query import Query
    from rag_core.search.filters import SearchFilter

    builds = {"with entries": open_build(args.with_entries), "without": open_build(args.without)}
    dataset = EvalDataset.load(args.dataset, args.split)
    texts = list(dataset.queries.values())
    embedder = builds["without"].embedder
    vectors = {text: vector.tolist() for text, vector in zip(texts, embedder.encode(texts), strict=True)}
    engines = {name: serving_engine(build.searcher, build.embedder, build.fusion) for name, build in builds.items()}
    search_filter = SearchFilter(builds["without"].settings.default_tenant)
    seconds: dict[tuple[str, str], list[float]] = {(name, mode): [] for name in engines for mode in MODES}
    for round_number in range(args.rounds):
        for text in texts:
            for mode in MODES:
                for name, engine in engines.items():
                    started = time.perf_counter()
                    engine.retrieve(Query(text, 10, mode, search_filter), vectors[text])  # type: ignore[arg-type]
                    if round_number:
                        seconds[(name, mode)].append(time.perf_counter() - started)

    print(f"\n{dataset.name}: {len(texts)} queries × {args.rounds - 1} timed rounds, top 10, in-process\n")
    print("| mode | build | rows | p50 ms | p95 ms | p50 / without | nDCG@10 |\n|---|---|---|---|---|---|---|")
    for mode in MODES:
        base = float(np.percentile(seconds[("without", mode)], 50))
        for name, engine in engines.items():
            def search(text: str, mode=mode, engine=engine) -> list[tuple[str, float]]:
                chunks = engine.retrieve(Query(text, 100, mode, search_filter), vectors[text])  # type: ignore[arg-type]
                return [(chunk.doc_id, chunk.score) for chunk in chunks]

            means, _ = ir_metrics(dataset.qrels, document_run(dataset, search, 100), ("ndcg@10",))
            values = seconds[(name, mode)]
            p50 = float(np.percentile(values, 50))
            print(
                f"| {mode} | {name} | {builds[name].searcher.rows:,} | {p50 * 1000:.2f} | "
                f"{float(np.percentile(values, 95)) * 1000:.2f} | {p50 / base:.2f} | {means['ndcg@10']:.4f} |"
            )


if __name__ == "__main__":
    main()
