"""How a document should be represented and scored, measured (issue 11): on a built index, each judged query
is searched once per list (chunk dense, chunk BM25, whole-document dense, whole-document BM25), and the
alternatives are scored from the same lists:

- `served`: what the API does — dense and hybrid over chunks (a document scores as its best chunk, a first
  chunk's cosine raised by the served `head_bonus`), BM25 alone over the build's document entries
  (rag_core.chunking) when it has them;
- `chunk max`: a document scores as its best chunk, in every mode, with no head bonus;
- `chunk max + 0.1 Σ rest`: its best chunk plus a tenth of its other retrieved chunks' scores;
- `first chunk`: only the document's first chunk counts (its head);
- `whole document`: one vector / one BM25 entry per whole document (title + text, truncated by the model);
- `max(chunk, whole)`: a document vector stored beside the chunk vectors, the better of the two counting;
- `head bonus δ`: dense and hybrid as served, with a first chunk's cosine raised by δ (a lead prior: the head
  states what the document is about);
- `naive baseline` (the report's, `rag_core.baseline`): whole documents, hybrid fused by RRF 1:1 (k=60).

Hybrid fuses each alternative's dense and BM25 document scores with the served fusion (convex, min-max per
query); the served row fuses chunks first, exactly as the API does. Pick on the train split, report on test:
the table has both.

Run: .venv/bin/python evals/doc_representation.py --data-dir /tmp/scifact-index [--splits train test]
"""

from __future__ import annotations

import argparse
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

DATASET = Path(__file__).parent / "datasets" / "scifact"
DEPTH = 100
HEAD_BONUSES = (0.01, 0.04, 0.08, 0.16)
Scores = dict[str, float]


def chunk_max(hits: Sequence) -> Scores:
    scores: Scores = {}
    for hit in hits:
        doc = hit.fields["doc_id"]
        scores[doc] = max(scores.get(doc, float("-inf")), abs(hit.score))
    return scores


def chunk_max_plus_rest(hits: Sequence, share: float = 0.1) -> Scores:
    best, total = chunk_max(hits), {}
    for hit in hits:
        doc = hit.fields["doc_id"]
        total[doc] = total.get(doc, 0.0) + abs(hit.score)
    return {doc: best[doc] + share * (total[doc] - best[doc]) for doc in best}


def first_chunk(hits: Sequence) -> Scores:
    return {hit.fields["doc_id"]: abs(hit.score) for hit in hits if int(hit.fields.get("position", 0)) == 0}


def chunk_max_fused(fused: Sequence) -> Scores:
    scores: Scores = {}
    for hit, score, _ranks in fused:
        doc = hit.fields["doc_id"]
        scores[doc] = max(scores.get(doc, float("-inf")), score)
    return scores


def better_of(chunks: Scores, whole: Scores) -> Scores:
    return {doc: max(chunks.get(doc, float("-inf")), whole.get(doc, float("-inf"))) for doc in {*chunks, *whole}}


def fuse_documents(dense: Scores, bm25: Scores, dense_weight: float, bm25_weight: float) -> Scores:
    """The served convex fusion, on document scores: Σ weight · min-max-normalised score."""
    fused: Scores = {}
    for scores, weight in ((dense, dense_weight), (bm25, bm25_weight)):
        if not scores:
            continue
        low, high = min(scores.values()), max(scores.values())
        for doc, score in scores.items():
            normalised = (score - low) / (high - low) if high > low else 1.0
            fused[doc] = fused.get(doc, 0.0) + weight * normalised
    return fused


def top(scores: Scores) -> Scores:
    return dict(sorted(scores.items(), key=lambda item: -item[1])[:DEPTH]) or {"__none__": 0.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, required=True, help="folder of a build (bench_indexing --keep)")
    parser.add_argument("--dataset", type=Path, default=DATASET)
    parser.add_argument("--splits", nargs="+", default=["train", "test"])
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    warnings.filterwarnings("ignore")

    from evals.served_build import open_build
    from rag_core.baseline import CHUNK_FIELDS, NAIVE_FUSION, naive_index, whole_documents
    from rag_core.embedding import EmbeddingCache
    from rag_core.evaluation import EvalDataset, ir_metrics, judged_dataset
    from rag_core.retrieval import Retriever, fuse, with_head_bonus
    from rag_core.search.filters import SearchFilter
    from rag_core.stats import paired_bootstrap_difference

    build = open_build(args.data_dir)
    settings, collection, embedder, chunks = build.settings, build.collection, build.embedder, build.searcher
    tenant = settings.default_tenant
    cache = EmbeddingCache(settings.embedding_cache_path)  # whole-document vectors are kept for reruns
    print(f"{collection} ({embedder.version}): whole-document vectors …", flush=True)
    whole = naive_index(whole_documents(chunks.row_table(CHUNK_FIELDS), tenant), embedder, cache, chunks.analyzer)
    fusion = build.fusion
    search_filter = SearchFilter(tenant)
    chunk_rows = search_filter.reading("chunks")
    served_bm25 = Retriever(chunks, fusion)

    def served_dense(lists: dict, bonus: float) -> Scores:
        return chunk_max(with_head_bonus(lists["dense"], bonus))

    def served_hybrid(lists: dict, bonus: float) -> Scores:
        """As the API ranks: chunks fused first (at the served candidate depth), then the best chunk per document."""
        cut = {name: lists[name][: max(DEPTH, fusion.candidates)] for name in ("dense", "bm25")}
        return chunk_max_fused(fuse(cut, replace(fusion, head_bonus=bonus)))

    def naive_hybrid(lists: dict) -> Scores:
        return chunk_max_fused(fuse({"dense": lists["whole_dense"], "bm25": lists["whole_bm25"]}, NAIVE_FUSION))

    variants: dict[str, Callable[[dict], tuple[Scores, Scores]]] = {
        "naive baseline": lambda lists: (chunk_max(lists["whole_dense"]), chunk_max(lists["whole_bm25"])),
        "served": lambda lists: (served_dense(lists, fusion.head_bonus), lists["served_bm25"]),
        "chunk max": lambda lists: (chunk_max(lists["dense"]), chunk_max(lists["bm25"])),
        "chunk max + 0.1 Σ rest": lambda lists: (
            chunk_max_plus_rest(lists["dense"]), chunk_max_plus_rest(lists["bm25"])
        ),
        "first chunk": lambda lists: (first_chunk(lists["dense"]), first_chunk(lists["bm25"])),
        "whole document": lambda lists: (chunk_max(lists["whole_dense"]), chunk_max(lists["whole_bm25"])),
        "chunk dense + whole-document BM25": lambda lists: (chunk_max(lists["dense"]), chunk_max(lists["whole_bm25"])),
        "max(chunk, whole)": lambda lists: (
            better_of(chunk_max(lists["dense"]), chunk_max(lists["whole_dense"])),
            better_of(chunk_max(lists["bm25"]), chunk_max(lists["whole_bm25"])),
        ),
    }
    bonuses = {"served": fusion.head_bonus, "chunk max": 0.0}
    for bonus in HEAD_BONUSES:
        bonuses[f"head bonus {bonus:g}"] = bonus
        variants[f"head bonus {bonus:g}"] = lambda lists, bonus=bonus: (
            served_dense(lists, bonus), lists["served_bm25"]
        )
    rows: dict[str, dict[str, float]] = {name: {} for name in variants}
    per_query: dict[tuple[str, str], dict[str, dict[str, float]]] = {}  # (split, mode) → {variant: {query: nDCG}}
    for split in args.splits:
        judged = judged_dataset(EvalDataset.load(args.dataset, split), chunks.doc_ids(), collection)
        ids = list(judged.queries)
        vectors = embedder.encode([judged.queries[q] for q in ids])
        lists = {}
        for query_id, vector in zip(ids, vectors, strict=True):
            text = judged.queries[query_id]
            lists[query_id] = {
                "dense": chunks.search_dense(vector.tolist(), 2 * DEPTH, chunk_rows),
                "bm25": chunks.search_bm25(text, 2 * DEPTH, chunk_rows),
                "served_bm25": chunk_max(
                    [replace(hit, score=score) for hit, score in served_bm25.bm25_documents(text, DEPTH, search_filter)]
                ),
                "whole_dense": whole.search_dense(vector.tolist(), DEPTH, search_filter),
                "whole_bm25": whole.search_bm25(text, DEPTH, search_filter),
            }
        for name, scored in variants.items():
            runs: dict[str, dict[str, Scores]] = {"dense": {}, "bm25": {}, "hybrid": {}}
            for query_id in ids:
                dense, bm25 = scored(lists[query_id])
                runs["dense"][query_id] = top(dense)
                runs["bm25"][query_id] = top(bm25)
                if name in bonuses:
                    runs["hybrid"][query_id] = top(served_hybrid(lists[query_id], bonuses[name]))
                elif name == "naive baseline":
                    runs["hybrid"][query_id] = top(naive_hybrid(lists[query_id]))
                else:
                    hybrid = fuse_documents(top(dense), top(bm25), fusion.dense_weight, fusion.bm25_weight)
                    runs["hybrid"][query_id] = top(hybrid)
            for mode, run in runs.items():
                means, scores = ir_metrics(judged.qrels, run, ("ndcg@10",))
                rows[name][f"{split} {mode}"] = means["ndcg@10"]
                per_query.setdefault((split, mode), {})[name] = scores["ndcg@10"]
        print(f"  {split}: {len(ids)} queries", flush=True)
    columns = [f"{split} {mode}" for split in args.splits for mode in ("bm25", "dense", "hybrid")]
    print("\nnDCG@10, documents fused by the served convex weights after scoring\n")
    print("| representation | " + " | ".join(columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for name, scores in rows.items():
        print(f"| {name} | " + " | ".join(f"{scores[column]:.4f}" for column in columns) + " |")
    print("\nserved − naive baseline, nDCG@10 per query: mean and paired bootstrap 95% interval (2,000 resamples)\n")
    print("| split | mode | margin | 95% interval |\n|---|---|---|---|")
    for (split, mode), by_variant in per_query.items():
        queries = sorted(by_variant["served"])
        margin = paired_bootstrap_difference(
            "ndcg@10", [by_variant["naive baseline"][q] for q in queries], [by_variant["served"][q] for q in queries]
        )
        print(f"| {split} | {mode} | {margin.difference:+.4f} | {margin.low:+.4f} to {margin.high:+.4f} |")


if __name__ == "__main__":
    main()
