"""Indexing benchmark on the vendored SciFact corpus (5,183 abstracts), or another BEIR-layout corpus (--dataset).

1. baseline: a plain `SentenceTransformer.encode` of exactly the texts the pipeline embeds (its chunk
   texts, title + passage), in one call, timed in this process;
2. full build: `rag index` over an empty data dir (fresh Dagster instance, Milvus Lite file, empty
   embedding cache) — parse, chunk, embed, upsert, catalog, all in one Dagster run;
3. incremental: 1% of the documents edited, `rag index` again.

Prints a table with seconds and the ratios (baseline / full build: 1.0 means no overhead at all;
incremental / full build). Run: .venv/bin/python evals/bench_indexing.py [--limit N]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

DATASET = Path(__file__).parent / "datasets" / "scifact"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=0, help="only the first N abstracts (0 = all)")
    parser.add_argument("--changed", type=float, default=0.01, help="fraction of documents edited")
    parser.add_argument("--keep", type=Path, help="build in this folder and keep it (evals/bench_serving.py reuses it)")
    parser.add_argument("--dataset", type=Path, default=DATASET, help="a BEIR-layout folder (its corpus.jsonl.gz)")
    parser.add_argument("--build-only", action="store_true", help="only the full build (a corpus to evaluate)")
    parser.add_argument(
        "--seed-cache", type=Path, help="start from this embedding cache (another build's): only new texts are encoded"
    )
    args = parser.parse_args()

    from dagster import instance_for_test
    from sentence_transformers import SentenceTransformer

    import rag_assets.definitions  # noqa: F401 - import the whole code location before any timing
    from rag_assets.cli import index
    from rag_core.chunking import ChunkingConfig, chunk_documents, passages
    from rag_core.documents import discover_sources, parse_source
    from rag_core.embedding import Embedder
    from rag_core.models import ModelResolver
    from rag_core.settings import Settings

    with gzip.open(args.dataset / "corpus.jsonl.gz") as corpus:
        records = [json.loads(line) for line in corpus]
    if args.limit:
        records = records[: args.limit]
    work = args.keep.resolve() if args.keep else Path(tempfile.mkdtemp(prefix="bench-indexing-"))
    if args.keep and work.exists():
        raise SystemExit(f"{work} exists — remove it or choose another --keep folder")
    documents = work / "documents"
    documents.mkdir(parents=True)
    corpus_file = documents / f"{args.dataset.name}.jsonl"
    corpus_file.write_text("".join(json.dumps(r) + "\n" for r in records))
    settings = Settings(data_dir=work / "data", documents_dir=documents, dagster_home=work / "dagster")

    # The texts the pipeline will embed, computed with the pipeline's own parser and chunker (untimed).
    model_dir = ModelResolver.from_settings(settings).model_dir(settings.embedding_model)
    embedder = Embedder(model_dir)
    config = ChunkingConfig(settings.chunk_max_tokens, settings.chunk_overlap_tokens, embedder.max_seq_length - 2)
    units = discover_sources(documents, settings.default_tenant, settings.jsonl_shard_size)
    parsed = [document for unit in units for document in parse_source(unit).documents]
    chunks = chunk_documents(parsed, embedder.tokenizer, config)
    texts = [chunk.embedded for chunk in passages(chunks)]  # what is encoded
    print(f"{len(records)} documents → {len(units)} partitions, {len(texts)} chunks", flush=True)

    baseline = float("nan")
    if not args.build_only:
        model = SentenceTransformer(str(model_dir), device="cpu", local_files_only=True)
        started = time.perf_counter()
        model.encode(texts, batch_size=settings.embedding_batch_size, normalize_embeddings=True, show_progress_bar=True)
        baseline = time.perf_counter() - started
        del model

    settings.resolved_dagster_home.mkdir(parents=True)
    if args.seed_cache:
        settings.embedding_cache_path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(args.seed_cache, settings.embedding_cache_path)
    with instance_for_test(temp_dir=str(settings.resolved_dagster_home)) as instance:
        full = index(settings, instance=instance)
        if args.build_only:
            print(f"built {full['vectors']} vectors in {full['seconds']:.1f} s → {work}")
            return
        rng = random.Random(13)
        edited = rng.sample(range(len(records)), max(1, round(len(records) * args.changed)))
        for position in edited:
            records[position]["text"] += " This abstract was revised."
        corpus_file.write_text("".join(json.dumps(r) + "\n" for r in records))
        incremental = index(settings, instance=instance)

    rows = [
        ("plain SentenceTransformer.encode (same chunk texts)", baseline, "1.00", ""),
        (
            "full build (rag index, empty data dir)",
            full["seconds"],
            f"{baseline / full['seconds']:.2f}",
            f"{full['vectors']} vectors, {full['embedded']} embedded",
        ),
        (
            f"incremental build ({len(edited)} documents edited)",
            incremental["seconds"],
            f"{incremental['seconds'] / full['seconds']:.3f} of full",
            f"{incremental['embedded']} embedded, {incremental['vectors']} vectors",
        ),
    ]
    print("\n| step | seconds | ratio | notes |\n|---|---|---|---|")
    for name, seconds, ratio, notes in rows:
        print(f"| {name} | {seconds:.1f} | {ratio} | {notes} |")
    print("\nratio for the full build = encode seconds / build seconds (1.0 = no pipeline overhead)")


if __name__ == "__main__":
    main()
