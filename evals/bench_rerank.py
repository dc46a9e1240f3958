"""Reranking benchmark on SciFact: test nDCG@10 per mode with and without the cross-encoder, and its latency.

1. index the corpus with `rag index` (the real pipeline: parser, chunker, embedding cache, Milvus Lite, the
   in-memory search engine the API serves Milvus Lite with) — once per embedder, reused on later runs;
2. train the reranker (`rag_core.rerank.train_reranker`) from the bundled MiniLM on the *train* qrels — all
   809 claims by default, a held-out tenth of them for per-epoch dev metrics — with hard negatives mined by
   BM25 + the base model over the index's chunk texts; or take `--reranker DIR|models:/…`;
3. run the reranker gate of the `reranker_model` asset (rag_core.rerank_tuning) on each build, in each mode
   (bm25, dense, hybrid): the blend weight (the cross-encoder's share of the order, the rest the retrieval score)
   is picked on the held-out train claims — never on test — then every test query goes through `QueryEngine` (the
   API's path) without the reranker and with it at that weight, and the improvement rule decides; documents are
   scored by their best chunk's position in the served order;
4. time hybrid retrieval as served (query encode + search [+ rerank], top 10) with and without the reranker,
   interleaved, and report p50 / p95 and the p50 ratio.

Run:  nice .venv/bin/python evals/bench_rerank.py --work-dir /tmp/bench-rerank
      nice .venv/bin/python evals/bench_rerank.py --work-dir /tmp/bench-rerank --reranker /tmp/bench-rerank/reranker
      ... --embedder models:/rag-embedder/1   (or a fine-tuned model directory): adds its rows
The test split is never used for training or for picking a weight; the gate reads it, as the asset's does.
"""

from __future__ import annotations

import argparse
import gzip
import os
import statistics
import time
import warnings
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DATASET = Path(__file__).parent / "datasets" / "scifact"
METRICS = ("ndcg@10", "recall@100", "mrr@10")
DEPTH = 100


def settings_for(work: Path, label: str, embedder: str):
    from rag_core.settings import Settings

    root = work / label
    return Settings(
        data_dir=root / "data",
        documents_dir=work / "documents",
        dagster_home=root / "dagster",
        embedding_model=embedder,
        milvus_uri="",
        mlflow_tracking_uri="",
    )


def built_index(settings) -> str:
    """The served collection of this data dir, after a `rag index` of the corpus when there is none yet."""
    from dagster import instance_for_test

    from rag_assets.cli import index
    from rag_core.search.engines import IndexConnection

    with IndexConnection.from_settings(settings).store() as store:
        served = store.alias_target()
    if served:
        return served
    settings.resolved_dagster_home.mkdir(parents=True, exist_ok=True)
    with instance_for_test(temp_dir=str(settings.resolved_dagster_home)) as instance:
        stats = index(settings, instance=instance)
    print(f"indexed: {stats}", flush=True)
    with IndexConnection.from_settings(settings).store() as store:
        return store.alias_target()


def write_documents(work: Path, dataset: Path) -> None:
    target = work / "documents" / "scifact.jsonl"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        with gzip.open(dataset / "corpus.jsonl.gz", "rt", encoding="utf-8") as handle:
            target.write_text(handle.read(), encoding="utf-8")


def train_split(args, examples: list) -> list:
    """The train pairs of the first `--max-train-queries` claims by id (all by default)."""
    if not args.max_train_queries:
        return examples
    keep = set(sorted({example.query_id for example in examples})[: args.max_train_queries])
    return [example for example in examples if example.query_id in keep]


def train(args, settings) -> Path:
    """The reranker trained on the train split: chunk texts of the index as passages, negatives mined over them."""
    from evals.bench_finetune import first_chunks, load_documents
    from rag_core.documents import discover_sources
    from rag_core.embedding import EmbeddingCache
    from rag_core.finetune import pairs_from_qrels
    from rag_core.rerank import (
        RerankerConfig,
        mine_reranker_negatives,
        rerank_dev_set,
        split_dev,
        train_reranker,
    )
    from rag_core.settings import bundled_model_dir

    base_dir = Path(args.base_model) if args.base_model else bundled_model_dir()
    config = RerankerConfig.preset("small" if args.small else "default", args.epochs)
    if args.hard_negatives:
        config = replace(config, hard_negatives=args.hard_negatives)
    examples = train_split(args, pairs_from_qrels(args.dataset, "train"))
    # The passages the reranker will read when serving: the index's chunks (their vectors are in its cache).
    units = discover_sources(settings.documents_dir, settings.default_tenant, 1 << 30)  # the indexed folder, as is
    corpus = first_chunks(load_documents(units), base_dir)
    examples = [replace(example, positive=corpus.get(example.positive_id, example.positive)) for example in examples]
    examples, dev_examples = split_dev(examples, args.dev_fraction)
    started = time.perf_counter()
    mined = mine_reranker_negatives(
        examples, corpus, base_dir, config.hard_negatives, "hybrid", EmbeddingCache(settings.embedding_cache_path)
    )
    dev = rerank_dev_set(dev_examples, corpus, config.dev_depth)
    print(
        f"{len(examples)} train pairs from {len({e.query_id for e in examples})} claims, "
        f"{len(dev_examples)} dev pairs; negatives mined in {time.perf_counter() - started:.1f} s; {config}",
        flush=True,
    )
    result = train_reranker(
        mined,
        base_dir,
        args.work_dir / "reranker",
        config,
        on_epoch=lambda epoch, metrics: print(f"epoch {epoch}: {metrics}", flush=True),
        dev=dev,
    )
    print(f"reranker: {result.pairs} pairs ({result.positives} positive) trained in {result.seconds:.0f} s", flush=True)
    return result.model_dir


def dev_claims(args):
    """The train claims `train` held out (the same deterministic split), as an evaluation set."""
    from rag_core.evaluation import EvalDataset
    from rag_core.finetune import pairs_from_qrels
    from rag_core.rerank import split_dev

    _, held = split_dev(train_split(args, pairs_from_qrels(args.dataset, "train")), args.dev_fraction)
    qrels: dict[str, dict[str, int]] = {}
    for example in held:
        qrels.setdefault(example.query_id, {})[example.positive_id] = 1
    queries = {example.query_id: example.query for example in held}
    return EvalDataset("scifact/train-dev", queries, qrels)


def latency(plain, reranked, texts: list[str], search_filter) -> dict[str, list[float]]:
    """ms per hybrid top-10 retrieval as served (encode + search [+ rerank]), the two engines interleaved."""
    from rag_core.query import Query

    timings: dict[str, list[float]] = {"hybrid": [], "hybrid + rerank": []}
    for text in texts:
        for name, engine in (("hybrid", plain), ("hybrid + rerank", reranked)):
            started = time.perf_counter()
            engine.retrieve(Query(text, 10, "hybrid", search_filter))
            timings[name].append((time.perf_counter() - started) * 1000)
    return timings


def percentile(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, default=DATASET)
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/bench-rerank"))
    parser.add_argument("--reranker", default="", help="a trained reranker (directory or models:/…): skip training")
    parser.add_argument("--embedder", default="", help="a fine-tuned embedder (models:/… or a directory): more rows")
    parser.add_argument(
        "--base-model",
        default="",
        help="the encoder directory to train from, which also mines the negatives (default: the bundled MiniLM)",
    )
    parser.add_argument("--epochs", type=int, default=0, help="override RerankerConfig.epochs")
    parser.add_argument("--hard-negatives", type=int, default=0, help="override RerankerConfig.hard_negatives")
    parser.add_argument("--small", action="store_true", help="RerankerConfig.small() (a CI-sized run)")
    parser.add_argument("--max-train-queries", type=int, default=0, help="0 = all 809 train claims")
    parser.add_argument("--dev-fraction", type=float, default=0.1, help="train claims held out for dev metrics")
    parser.add_argument("--candidates", type=int, default=0, help="chunks reranked per query (0 = the setting)")
    parser.add_argument("--modes", nargs="*", default=["bm25", "dense", "hybrid"], help="none: latency only")
    parser.add_argument("--weight", type=float, help="judge this weight (default: picked on train-dev)")
    parser.add_argument("--no-base", action="store_true", help="with --embedder: evaluate only the fine-tuned build")
    parser.add_argument("--latency-queries", type=int, default=100)
    parser.add_argument("--test-queries", type=int, default=0, help="the first N test claims by id (0 = all 300)")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads (0 = torch's default); 1 on a machine shared with other "
        "work, where OpenMP threads waiting for a busy core make every forward pass ~40x slower",
    )
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    args.work_dir = args.work_dir.resolve()
    write_documents(args.work_dir, args.dataset)

    from rag_core.evaluation import EvalDataset
    from rag_core.models import BUNDLED_MODEL, ModelResolver, load_embedder
    from rag_core.promotion import spec_of
    from rag_core.query import QueryEngine
    from rag_core.rerank import Reranker
    from rag_core.rerank_tuning import WEIGHTS, RerankerGate, verdicts_table
    from rag_core.retrieval import SearchFilter
    from rag_core.search.engines import IndexConnection

    builds = ([] if args.no_base and args.embedder else [("base", "")]) + (
        [("fine-tuned", args.embedder)] if args.embedder else []
    )
    base_settings = settings_for(args.work_dir, "base", "")
    collections = {label: built_index(settings_for(args.work_dir, label, ref)) for label, ref in builds}
    resolver = ModelResolver.from_settings(base_settings)
    reranker_dir = args.reranker or str(train(args, base_settings))
    reranker = Reranker.from_reference(reranker_dir, resolver).warm_up()
    candidates = args.candidates or base_settings.rerank_candidates
    test = EvalDataset.load(args.dataset, "test")
    if args.test_queries:
        keep = sorted(test.queries)[: args.test_queries]
        test = EvalDataset(test.name, {q: test.queries[q] for q in keep}, {q: test.qrels[q] for q in keep})
    search_filter = SearchFilter(base_settings.default_tenant)
    fusion = base_settings.fusion()
    print(f"\nreranker {reranker.version} ({reranker_dir}), {candidates} candidates per query", flush=True)

    rows: list[tuple[str, str, object]] = []
    timings: dict[str, list[float]] = {}
    weights = WEIGHTS if args.weight is None else (args.weight,)
    tuning = dev_claims(args)  # the train claims held out of the reranker's training
    for label, reference in builds:
        settings = settings_for(args.work_dir, label, reference)
        connection = IndexConnection.from_settings(settings)
        collection = collections[label]
        with connection.store() as store:
            spec = spec_of(store.collection_properties(collection), BUNDLED_MODEL)
        embedder = load_embedder(spec.model, ModelResolver.from_settings(settings), backend=spec.backend).load()
        searcher = connection.memory_engine().searcher(collection)
        started = time.perf_counter()
        # What the `reranker_model` asset's gate decides on this build, mode by mode: the weight picked on the
        # train claims held out of training, then the improvement rule on the test claims against no reranking.
        gate = RerankerGate(
            searcher, embedder, fusion, reranker, tuning, test, settings.default_tenant, candidates,
            settings.rerank_min_gain, weights,
        )
        verdicts = gate.verdicts(args.modes)
        print(f"\n{label} ({time.perf_counter() - started:.0f} s):\n{verdicts_table(verdicts)}", flush=True)
        for mode, verdict in verdicts.items():
            print(f"{label} {mode}: {verdict.reason}", flush=True)
            rows.append((label, mode, verdict))
        if label == builds[0][0] and args.latency_queries:

            def encode(text: str, embedder=embedder) -> list[float]:
                return embedder.encode([text])[0].tolist()

            hybrid = verdicts.get("hybrid")
            reranker.weight = hybrid.weight if hybrid is not None and hybrid.weight > 0 else reranker.weight
            plain = QueryEngine(searcher, encode, fusion)
            reranked = QueryEngine(searcher, encode, fusion, reranker=reranker, rerank_candidates=candidates)
            latency_build = label
            texts = list(test.queries.values())[: args.latency_queries]
            latency(plain, reranked, texts[:3], search_filter)  # warm both paths
            timings = latency(plain, reranked, texts, search_filter)

    print(
        f"\n{args.dataset.name} test ({len(test.queries)} queries), documents scored by their best chunk's served "
        f"position; reranker: {candidates} candidates; weight picked per mode on {len(tuning.queries)} "
        f"held-out train queries; gate: +{base_settings.rerank_min_gain} nDCG@10 with the paired 95% interval above 0\n"
    )
    print("| embedder | mode | weight | nDCG@10 | + rerank | Δ | 95% CI | served by the gate |")
    print("|---|---|---|---|---|---|---|---|")
    for label, mode, verdict in rows:
        decision = verdict.decision
        interval = (
            f"{decision.effect_low:+.4f} to {decision.effect_high:+.4f}"
            if decision.effect_low is not None and decision.effect_high is not None
            else "–"
        )
        print(
            f"| {label} | {mode} | {verdict.weight:g} | {verdict.without:.4f} | {verdict.with_reranker:.4f} | "
            f"{verdict.with_reranker - verdict.without:+.4f} | {interval} | {'yes' if verdict.adopted else 'no'} |"
        )
    if timings:
        base_p50 = percentile(timings["hybrid"], 50)
        print(
            f"\nLatency: {latency_build} hybrid, top 10, {len(timings['hybrid'])} test queries one at a time "
            f"(query encode + search [+ rerank at weight {reranker.weight:g}]), interleaved\n"
        )
        print("| path | p50 ms | p95 ms | p50 / hybrid p50 |\n|---|---|---|---|")
        for name, values in timings.items():
            p50 = percentile(values, 50)
            print(f"| {name} | {p50:.1f} | {percentile(values, 95):.1f} | {p50 / base_p50:.2f} |")


if __name__ == "__main__":
    main()
