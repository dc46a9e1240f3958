"""Which BM25 analyzer: whole-document BM25 nDCG@10 with the words as written, English stop words removed,
Snowball English stems, and both, on each corpus' train and test splits (pick on train). Scoring is the
project's own (rag_core.search.analyzer: Okapi BM25, k1 1.5, b 0.75), over title + text per document.

Run:  .venv/bin/python evals/bm25_analyzers.py [--datasets evals/datasets/scifact evals/datasets/manpages]
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
from pathlib import Path

import numpy as np

DATASETS = [Path(__file__).parent / "datasets" / name for name in ("scifact", "manpages")]
VARIANTS = {"as written": (False, False), "stop words": (True, False), "stems": (False, True), "both": (True, True)}
_WORD = re.compile(r"\w+")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", type=Path, nargs="+", default=DATASETS)
    args = parser.parse_args()

    import Stemmer
    from bm25s.stopwords import STOPWORDS_EN

    from rag_core.evaluation import EvalDataset, ir_metrics
    from rag_core.search.analyzer import idf, saturation, term_matrix

    stemmer, stop = Stemmer.Stemmer("english"), set(STOPWORDS_EN)

    def analyze(text: str, drop_stop: bool, stem: bool) -> str:
        tokens = _WORD.findall(text.lower())
        tokens = [t for t in tokens if t not in stop] if drop_stop else tokens
        return " ".join(stemmer.stemWords(tokens) if stem else tokens)

    print("| corpus | split | " + " | ".join(VARIANTS) + " |\n|---|---|" + "---|" * len(VARIANTS))
    for folder in args.datasets:
        with gzip.open(folder / "corpus.jsonl.gz", "rt", encoding="utf-8") as handle:
            documents = [json.loads(line) for line in handle if line.strip()]
        ids = [document["_id"] for document in documents]
        for split in ("train", "test"):
            dataset = EvalDataset.load(folder, split)
            scores = []
            for drop_stop, stem in VARIANTS.values():
                texts = [analyze(f"{d.get('title') or ''}\n{d['text']}", drop_stop, stem) for d in documents]
                counts, terms = term_matrix(texts)
                column = {term: j for j, term in enumerate(terms)}
                lengths = np.asarray(counts.sum(1)).ravel()
                weights = idf(len(ids), np.bincount(counts.indices, minlength=len(terms)))
                postings = counts.tocsc()
                run = {}
                for query_id, query in dataset.queries.items():
                    score = np.zeros(len(ids))
                    for term in analyze(query, drop_stop, stem).split():
                        j = column.get(term)
                        if j is None:
                            continue
                        rows = postings.indices[postings.indptr[j] : postings.indptr[j + 1]]
                        frequency = postings.data[postings.indptr[j] : postings.indptr[j + 1]]
                        score[rows] += weights[j] * saturation(frequency, lengths[rows], lengths.mean())
                    top = np.argsort(-score)[:100]
                    run[query_id] = {ids[i]: float(score[i]) for i in top if score[i] > 0} or {"__none__": 0.0}
                scores.append(ir_metrics(dataset.qrels, run, ("ndcg@10",))[0]["ndcg@10"])
            print(f"| {folder.name} | {split} | " + " | ".join(f"{s:.4f}" for s in scores) + " |", flush=True)


if __name__ == "__main__":
    main()
