"""Fine-tuning benchmark on SciFact: test nDCG@10 / recall@100 / MRR@10 of the base and the fine-tuned model.

1. index the corpus with the base model through our real stack (pipeline parser, token-aware chunker,
   embedding cache, Milvus Lite collection with dense HNSW + BM25);
2. fine-tune the base model on the *train* qrels (minus a held-out dev slice of train queries) with hard
   negatives mined by `rag_core.finetune.mine_hard_negatives`;
3. index the corpus again with the fine-tuned model (a second collection);
4. tune the hybrid fusion on the held-out dev slice of train — never on test — and report BM25, dense
   and hybrid on the test split for both models, plus the training seconds, searched by the in-memory engine
   (the default; Milvus Lite's own search takes ~0.5 s a BM25 query) over each collection's rows.

Run:  .venv/bin/python evals/bench_finetune.py --work-dir /tmp/bench-finetune
      .venv/bin/python evals/bench_finetune.py --work-dir /tmp/bench-finetune --skip-train --model DIR
Embeddings are cached in the work dir, so a second run re-embeds nothing it has seen.
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import os
import random
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DATASET = Path(__file__).parent / "datasets" / "scifact"
METRICS = ("ndcg@10", "recall@100", "mrr@10")
DEPTH = 100


@dataclass
class Index:
    """One model's collection over the corpus, and the in-memory engine's index of it (the default engine)."""

    label: str
    embedder: object
    collection: str
    searcher: object


def load_sources(dataset: Path, work: Path) -> list:
    """The corpus as a source folder of one .jsonl file, cut into the pipeline's source units."""
    from rag_core.documents import discover_sources

    documents_dir = work / "documents"
    target = documents_dir / "corpus.jsonl"
    if not target.exists():
        documents_dir.mkdir(parents=True, exist_ok=True)
        with gzip.open(dataset / "corpus.jsonl.gz", "rt", encoding="utf-8") as handle:
            target.write_text(handle.read(), encoding="utf-8")
    return discover_sources(documents_dir, "default", 1 << 30)


def load_documents(units: Sequence) -> list:
    """The corpus' documents as the pipeline parses them."""
    from rag_core.documents import ParseLimits
    from rag_core.indexing import parse_units

    return [document for source in parse_units(units, ParseLimits(), redact_pii=False) for document in source.documents]


def build_index(store, cache, label: str, model_dir: Path, units: Sequence) -> Index:
    """One collection over the corpus through the pipeline the assets and candidate builds run."""
    from rag_core.chunking import ChunkingConfig
    from rag_core.documents import ParseLimits
    from rag_core.embedding import Embedder
    from rag_core.indexing import build_from_sources
    from rag_core.promotion import index_build
    from rag_core.search.memory import ROW_FIELDS, MemoryIndex, rows_table

    embedder = Embedder(model_dir)
    chunking = ChunkingConfig(256, 32, embedder.max_seq_length - 2)
    build = replace(index_build(embedder, chunking), embedding_model=label)
    collection, stats = build_from_sources(store, build, units, embedder, cache, chunking, ParseLimits(), False)
    print(f"{label}: {stats.chunks} chunks, {stats.computed} embedded, {stats.cached} from the cache", flush=True)
    rows = rows_table(list(store.all_rows(collection, [*ROW_FIELDS, "dense"])))
    searcher = MemoryIndex.build(*rows, analyzer=chunking.bm25_analyzer)
    return Index(label, embedder, collection, searcher)


def query_vectors(index: Index, cache, queries: dict[str, str]) -> dict[str, list[float]]:
    from rag_core.embedding import embed_with_cache
    from rag_core.ids import content_hash

    texts = list(queries.values())
    vectors, _ = embed_with_cache(index.embedder, cache, texts, [content_hash("query:" + t) for t in texts])
    return {text: vector.tolist() for text, vector in zip(texts, vectors, strict=True)}


def evaluate(dataset, search: Callable[[str], list[tuple[str, float]]]) -> dict[str, float]:
    from rag_core.evaluation import document_run, ir_metrics

    means, _ = ir_metrics(dataset.qrels, document_run(dataset, search, DEPTH), METRICS)
    return means


def retriever_search(index: Index, vectors: dict[str, list[float]], mode: str, fusion=None):
    from rag_core.retrieval import Retriever

    retriever = Retriever(index.searcher, fusion)

    def search(text: str) -> list[tuple[str, float]]:
        return [(c.doc_id, c.score) for c in retriever.retrieve(text, vectors[text], DEPTH, mode)]

    return search


def fusion_grid() -> list:
    """Candidate fusions: weighted RRF and min-max-normalised convex combinations."""
    from rag_core.retrieval import FusionConfig

    grid = [
        FusionConfig(rrf_k=k, dense_weight=w, bm25_weight=1.0, candidates=DEPTH, method="rrf")
        for k, w in itertools.product((10, 30, 60, 100), (0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0))
    ]
    if "method" in {f.name for f in fields(FusionConfig)}:
        grid += [
            FusionConfig(method="convex", dense_weight=w, bm25_weight=round(1.0 - w, 2), candidates=DEPTH)
            for w in (0.3, 0.4, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.9)
        ]
    return grid


def tune_fusion(index: Index, dev, vectors) -> list[tuple[float, object]]:
    """(dev nDCG@10, fusion) for every candidate, best first; hits are fetched once per query and re-fused."""
    from rag_core.retrieval import RetrievedChunk, fuse
    from rag_core.search.filters import SearchFilter

    chunks = SearchFilter(rows="chunks")  # what hybrid fuses: chunks, never document entries
    ranked = {
        text: {
            "dense": index.searcher.search_dense(vectors[text], DEPTH, chunks),
            "bm25": index.searcher.search_bm25(text, DEPTH, chunks),
        }
        for text in dev.queries.values()
    }
    scored = []
    for fusion in fusion_grid():

        def search(text: str, fusion=fusion) -> list[tuple[str, float]]:
            fused = fuse(ranked[text], fusion)
            return [(RetrievedChunk.from_hit(h, s).doc_id, s) for h, s, _ranks in fused[:DEPTH]]

        scored.append((evaluate(dev, search)["ndcg@10"], fusion))
    return sorted(scored, key=lambda item: -item[0])


def describe(fusion) -> str:
    if getattr(fusion, "method", "rrf") == "convex":
        return f"convex, dense {fusion.dense_weight:g} / bm25 {fusion.bm25_weight:g}"
    return f"RRF k={fusion.rrf_k}, dense {fusion.dense_weight:g} / bm25 {fusion.bm25_weight:g}"


def split_train(dataset_dir: Path, dev_queries: int, seed: int) -> tuple[list[str], list[str]]:
    from rag_core.evaluation import EvalDataset

    train_ids = sorted(EvalDataset.load(dataset_dir, "train").qrels)
    random.Random(seed).shuffle(train_ids)
    return sorted(train_ids[dev_queries:]), sorted(train_ids[:dev_queries])


def subset(dataset, query_ids: Sequence[str], name: str):
    from rag_core.evaluation import EvalDataset

    return EvalDataset(name, {q: dataset.queries[q] for q in query_ids}, {q: dataset.qrels[q] for q in query_ids})


def first_chunks(documents: Sequence, model_dir: Path) -> dict[str, str]:
    """{doc id: its first chunk's embedded text} — what the index holds, so base vectors come from the cache."""
    from rag_core.chunking import ChunkingConfig, chunk_documents
    from rag_core.embedding import Embedder

    embedder = Embedder(model_dir)
    texts: dict[str, str] = {}
    for chunk in chunk_documents(documents, embedder.tokenizer, ChunkingConfig(256, 32, embedder.max_seq_length - 2)):
        texts.setdefault(chunk.doc_id, chunk.embedded)
    return texts


def dev_corpus(dev, corpus: dict[str, str], base_dir: Path, cache, per_query: int = 3, extra: int = 200) -> dict:
    """The dev positives, each dev query's top BM25 and base-dense documents, and random ones: a small
    corpus that is cheap to re-embed after every epoch yet holds the hard distractors."""
    import numpy as np

    from rag_core.finetune import bm25_scores, dense_scores

    ids, texts = list(corpus), list(corpus.values())
    questions = list(dev.queries.values())
    wanted = {doc_id for judged in dev.qrels.values() for doc_id in judged}
    for scores in (bm25_scores(questions, texts), dense_scores(questions, texts, base_dir, cache)):
        wanted.update(ids[i] for i in np.argsort(-scores, axis=1)[:, :per_query].ravel())
    wanted.update(random.Random(7).sample(ids, extra))
    return {doc_id: corpus[doc_id] for doc_id in ids if doc_id in wanted}


def train(args, documents, train_ids: list[str], dev, base_dir: Path, cache) -> tuple[Path, float]:
    from rag_core.finetune import FinetuneConfig, finetune, mine_hard_negatives, pairs_from_qrels

    config = FinetuneConfig.preset("small" if args.small else "default", epochs=args.epochs)
    if args.no_negatives:
        config = replace(config, use_hard_negatives=False)
    if args.train_on_dev:
        train_ids = [*train_ids, *dev.queries]
        config = replace(config, keep_best=False)  # the dev slice is seen in training: it cannot pick an epoch
    wanted = set(train_ids)
    examples = [e for e in pairs_from_qrels(args.dataset, "train") if e.query_id in wanted]
    corpus = first_chunks(documents, base_dir)
    started = time.perf_counter()
    if config.use_hard_negatives:
        examples = mine_hard_negatives(examples, corpus, base_dir, method=args.mining, cache=cache)
    mined = time.perf_counter() - started
    print(f"{len(examples)} training pairs from {len(train_ids)} train queries; negatives mined in {mined:.1f} s")
    dev_tuple = (dev.queries, dev_corpus(dev, corpus, base_dir, cache), dev.qrels)
    print(f"dev: {len(dev.queries)} held-out train queries over {len(dev_tuple[1])} documents; {config}", flush=True)
    output = args.work_dir / "models" / (args.name or f"finetuned-e{config.epochs}")
    result = finetune(
        base_dir, examples, output, config, dev=dev_tuple, on_epoch=lambda e, m: print(f"epoch {e}: {m}", flush=True)
    )
    print(f"fine-tuned {result.examples} examples in {result.seconds:.0f} s → {result.model_dir}")
    return result.model_dir, result.seconds + mined


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, default=DATASET)
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/bench-finetune"))
    parser.add_argument("--epochs", type=int, default=0, help="override FinetuneConfig.epochs")
    parser.add_argument("--small", action="store_true", help="FinetuneConfig.small() (a CI-sized run)")
    parser.add_argument("--skip-train", action="store_true", help="evaluate --model (or only the base model)")
    parser.add_argument("--model", type=Path, help="an already fine-tuned model directory")
    parser.add_argument("--dev-queries", type=int, default=120, help="train queries held out for tuning")
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--mining", default="hybrid", choices=["bm25", "dense", "hybrid"])
    parser.add_argument("--no-negatives", action="store_true", help="in-batch negatives only")
    parser.add_argument("--name", help="model folder name under WORK_DIR/models")
    parser.add_argument(
        "--train-on-dev",
        action="store_true",
        help="train on every train query, the dev slice included, for exactly --epochs (what `rag finetune`'s "
        "refit does after its dev run picked the epochs); train-dev figures are then in-sample",
    )
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    args.work_dir = args.work_dir.resolve()
    args.work_dir.mkdir(parents=True, exist_ok=True)

    from rag_core.embedding import EmbeddingCache
    from rag_core.evaluation import EvalDataset
    from rag_core.retrieval import FusionConfig
    from rag_core.settings import bundled_model_dir
    from rag_core.store import MilvusStore, milvus_client

    # the library's fusion before the grid on SciFact train chose the served convex 0.55 / 0.45
    earlier_default = FusionConfig(rrf_k=60, dense_weight=1.0, bm25_weight=1.0, candidates=50, method="rrf")
    units = load_sources(args.dataset, args.work_dir)
    documents = load_documents(units)
    cache = EmbeddingCache(args.work_dir / "embedding_cache.sqlite")
    test = EvalDataset.load(args.dataset, "test")
    train_ids, dev_ids = split_train(args.dataset, args.dev_queries, args.seed)
    dev = subset(EvalDataset.load(args.dataset, "train"), dev_ids, "scifact/train-dev")
    base_dir = bundled_model_dir()
    seconds = None
    model_dir = args.model
    if not args.skip_train:
        model_dir, seconds = train(args, documents, train_ids, dev, base_dir, cache)

    rows: list[tuple[str, dict[str, float], str]] = []
    with milvus_client(str(args.work_dir / "milvus.db")) as client:
        store = MilvusStore(client, "bench")
        models = [("base", base_dir)] + ([("finetuned", model_dir)] if model_dir else [])
        for label, directory in models:
            index = build_index(store, cache, label, directory, units)
            test_vectors = query_vectors(index, cache, test.queries)
            dev_vectors = query_vectors(index, cache, dev.queries)
            scored = tune_fusion(index, dev, dev_vectors)
            best_rrf = next(item for item in scored if getattr(item[1], "method", "rrf") == "rrf")
            for score, fusion in [*scored[:3], best_rrf]:
                print(f"{label}: train-dev nDCG@10 {score:.4f} with {describe(fusion)}", flush=True)
            if label == "base":
                rows.append(("BM25", evaluate(test, retriever_search(index, test_vectors, "bm25")), ""))
            rows.append((f"{label} dense", evaluate(test, retriever_search(index, test_vectors, "dense")), ""))
            for name, fusion in (
                ("the served default", FusionConfig()),
                ("RRF k=60, 1:1 (the earlier default)", earlier_default),
                ("best RRF on train-dev", best_rrf[1]),
                ("best on train-dev", scored[0][1]),
            ):
                means = evaluate(test, retriever_search(index, test_vectors, "hybrid", fusion))
                rows.append((f"{label} hybrid, {name}", means, describe(fusion)))

    print(f"\nSciFact test ({len(test.queries)} queries), documents scored by their best chunk\n")
    print("| retrieval | nDCG@10 | recall@100 | MRR@10 | fusion |\n|---|---|---|---|---|")
    for name, means, note in rows:
        print(f"| {name} | " + " | ".join(f"{means[m]:.4f}" for m in METRICS) + f" | {note} |")
    if seconds is not None:
        print(f"\nfine-tuning (mining + training): {seconds:.0f} s")


if __name__ == "__main__":
    main()
