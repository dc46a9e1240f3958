"""Which offline answerer should be the first-run default? Both run here (rag_core.answerers).

For SciFact *train* claims (never test), the sources are the claim's cited abstract plus two other
abstracts, shuffled. Per answerer: how often it cites the cited abstract, how grounded the answer is
(share of its content words found in the sources), how often it cites a source that was not given, and
seconds per answer. Run: .venv/bin/python evals/compare_answerers.py [--claims 20]
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import re
import statistics
import time
from pathlib import Path

DATA = Path(__file__).parent / "datasets" / "scifact"
WORD = re.compile(r"[a-z0-9]+")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--claims", type=int, default=20)
    parser.add_argument("--models", nargs="+", default=["extractive/best-sentences", "local-gguf/gemma-3-270m"])
    args = parser.parse_args()

    from rag_core.generation import LLMConfig, generate
    from rag_core.prompt import CITATION
    from rag_core.retrieval import RetrievedChunk
    from rag_core.settings import settings_or_exit

    settings = settings_or_exit()  # the data dir a local model is converted into

    with gzip.open(DATA / "corpus.jsonl.gz") as handle:
        corpus = {record["_id"]: record for record in map(json.loads, handle)}
    with gzip.open(DATA / "queries.jsonl.gz") as handle:
        queries = {record["_id"]: record["text"] for record in map(json.loads, handle)}
    pairs = [line.split("\t")[:2] for line in (DATA / "qrels" / "train.tsv").read_text().splitlines()[1:]]
    rng = random.Random(3)
    rng.shuffle(pairs)
    all_ids = sorted(corpus)

    def chunk(doc_id: str) -> RetrievedChunk:
        record = corpus[doc_id]
        return RetrievedChunk(doc_id, doc_id, record["title"], record["text"][:1200], "scifact", 1.0, 0, 0, "default")

    cases = []
    for query_id, doc_id in pairs[: args.claims]:
        sources = [chunk(doc_id), *(chunk(other) for other in rng.sample(all_ids, 2))]
        rng.shuffle(sources)
        gold = next(number for number, source in enumerate(sources, 1) if source.doc_id == doc_id)
        cases.append((queries[query_id], sources, gold))

    print("| answerer | cites the cited abstract | grounded words | invalid citations | s / answer |")
    print("|---|---|---|---|---|")
    for model in args.models:
        config = LLMConfig(model=model, timeout_s=600, data_dir=settings.data_dir.resolve())
        generate(cases[0][0], cases[0][1], config)  # load / convert outside the timing
        hits, grounded, invalid, seconds = 0, [], 0, []
        for question, sources, gold in cases:
            started = time.perf_counter()
            answer = generate(question, sources, config)
            seconds.append(time.perf_counter() - started)
            raw_numbers = [int(n) for n in CITATION.findall(answer.text)]
            invalid += sum(1 for n in raw_numbers if not 1 <= n <= len(sources))
            hits += gold in answer.citations
            source_words = set(WORD.findall(" ".join(s.title + " " + s.text for s in sources).lower()))
            words = [w for w in WORD.findall(CITATION.sub("", answer.text).lower()) if len(w) > 3]
            grounded.append(sum(w in source_words for w in words) / len(words) if words else 0.0)
        print(
            f"| {model} | {hits / len(cases):.2f} | {statistics.mean(grounded):.2f} | {invalid} | "
            f"{statistics.median(seconds):.2f} |"
        )
        print(f"  e.g. {cases[0][0]!r} → {generate(cases[0][0], cases[0][1], config).text[:300]!r}")


if __name__ == "__main__":
    main()
