"""Search at scale: the in-memory engine at 10k / 100k / 1M chunks next to its floor — faiss (the same HNSW
graph, searched directly, no filter) and bm25s over the same texts, fused by the same convex formula — in
the same process, on the same rows.

Chunks are synthetic: texts are 3–8 sentences drawn from the vendored SciFact abstracts (realistic term
statistics), vectors are random unit vectors (384-d, the shape of MiniLM's). 10% of the rows belong to a
second tenant, so every search carries the tenant mask the API applies. Per size the table gives:

- build: the base snapshot written once (tokenize, BM25 matrix, HNSW graph), seconds;
- load: a fresh process loading that snapshot, seconds, and its resident memory;
- p50 / p95 of dense, BM25 and hybrid (top 10, 100 candidates per list) searches, and the floor's;
- freshness: 1,000 chunks upserted (then 1,000 deleted) through the search log, seconds until a query sees
  them; and the hybrid p50 right after those writes, as a ratio to the settled p50.

Up to `--milvus-rows` the rows are written through `MilvusStore` (Milvus Lite + the search log), so the
kept data dir is a served index for `evals/bench_serving.py --data-dir`; above it only the search log is
written (Milvus Lite would take hours to hold a million rows).

Run: .venv/bin/python evals/bench_scale.py --work-dir /tmp/bench-scale [--sizes 10000 100000 1000000]
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import os
import re
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

DATA = Path(__file__).parent / "datasets" / "scifact"
DIMENSION = 384
QUERIES = 200
ALIAS = "rag_chunks"


def corpus_sentences() -> list[str]:
    with gzip.open(DATA / "corpus.jsonl.gz") as handle:
        texts = [json.loads(line)["text"] for line in handle]
    return [sentence for text in texts for sentence in re.split(r"(?<=[.!?])\s+", text) if len(sentence) > 20]


def query_texts() -> list[str]:
    with gzip.open(DATA / "queries.jsonl.gz") as handle:
        return [json.loads(line)["text"] for line in handle][:QUERIES]


def unit_vectors(count: int, seed: int) -> np.ndarray:
    vectors = np.random.default_rng(seed).standard_normal((count, DIMENSION), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors


def synthetic_rows(count: int, start: int, sentences: list[str], seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    vectors = unit_vectors(count, seed)
    rows = []
    for offset in range(count):
        number = start + offset
        text = " ".join(sentences[j] for j in rng.integers(0, len(sentences), rng.integers(3, 9)))
        rows.append(
            {
                "chunk_id": f"doc{number // 2}#{number % 2}:{number:x}",
                "doc_id": f"doc{number // 2}",
                "source_key": f"shard-{number % 64}",
                "tenant": "default" if number % 10 else "other",
                "source": f"shard-{number % 64}.jsonl",
                "title": f"Document {number // 2}",
                "text": text,
                "search_text": f"Document {number // 2}\n{text}",
                "position": number % 2,
                "start_char": 0,
                "end_char": len(text),
                "dense": vectors[offset],
                "metadata": {},
            }
        )
    return rows


def folder_name(size: int, backend: str = "torch") -> str:
    return f"n{size}" if backend == "torch" else f"n{size}-{backend}"


@contextlib.contextmanager
def log_only():
    raise RuntimeError("this benchmark reads the search log only, never Milvus")
    yield  # pragma: no cover


def near_rows(vectors: np.ndarray, count: int) -> np.ndarray:
    """Query vectors: `count` rows spread over the build, slightly moved."""
    near = vectors[np.arange(count) * (len(vectors) // count)] + 0.05 * unit_vectors(count, 99)
    return near / np.linalg.norm(near, axis=1, keepdims=True)


def timed(function, count: int) -> list[float]:
    for i in range(5):
        function(i)
    latencies = []
    for i in range(count):
        begin = time.perf_counter()
        function(i)
        latencies.append((time.perf_counter() - begin) * 1000)
    return latencies


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# --------------------------------------------------------------------------- building (parent process)


def build(work: Path, size: int, milvus_rows: int, sentences: list[str], backend: str = "torch") -> dict:
    from rag_core.embedding import model_fingerprint
    from rag_core.search.engines import IndexConnection
    from rag_core.search.log import SearchLog
    from rag_core.search.memory import MemoryIndex, rows_table
    from rag_core.settings import bundled_model_dir
    from rag_core.store import IndexBuild

    # Recorded as the bundled model's build, so `rag-serve` serves it (queries embedded with MiniLM).
    version = f"all-MiniLM-L6-v2@{model_fingerprint(bundled_model_dir())}"
    build_record = IndexBuild(
        "all-MiniLM-L6-v2", version if backend == "torch" else f"{version}+{backend}", DIMENSION,
        "tokens256-overlap32", "bundled:all-MiniLM-L6-v2", 256, 32,
    )
    data_dir = work / folder_name(size, backend) / "data"
    search_dir = data_dir / "search"
    log = SearchLog(search_dir)
    started = time.perf_counter()
    batch = 50_000
    if size <= milvus_rows:
        connection = IndexConnection(str(data_dir / "milvus.db"), "", ALIAS, search_dir, 600)
        with connection.store() as store:
            collection = store.ensure_collection(build_record)
            for start in range(0, size, batch):
                rows = synthetic_rows(min(batch, size - start), start, sentences, seed=start)
                for row in rows:
                    row["dense"] = row["dense"].tolist()
                store.upsert(collection, rows)
                print(f"  n={size}: {start + len(rows):,} rows in Milvus Lite and the search log", flush=True)
            store.point_alias(collection)
        milvus_seconds = time.perf_counter() - started
    else:
        collection = f"{ALIAS}__synthetic_{size}"
        properties = replace(build_record.record(), index_version="synthetic").to_properties()
        log.created(collection, properties)
        tables = []
        for start in range(0, size, batch):
            tables.append(rows_table(synthetic_rows(min(batch, size - start), start, sentences, seed=start)))
            print(f"  n={size}: {start + batch:,} rows generated", flush=True)
        import pyarrow as pa

        table = pa.concat_tables([t for t, _ in tables])
        vectors = np.vstack([v for _, v in tables])
        del tables
        index = MemoryIndex.build(table, vectors, seq=0, dimension=DIMENSION)
        log.save_base(collection, index)
        log.alias_moved(ALIAS, collection)
        milvus_seconds = None
    # The snapshot a serving process loads: every row, its BM25 matrix and HNSW graph.
    snapshot_started = time.perf_counter()
    if log.latest_base(collection) is None or log.latest_base(collection)[0] < log.last_seq(collection):
        from rag_core.search.engines import MemoryEngine

        engine = MemoryEngine(log, ALIAS, log_only, snapshot_in_background=False)
        log.save_base(collection, engine.index(collection))
    return {
        "collection": collection,
        "write_seconds": milvus_seconds,
        "snapshot_seconds": time.perf_counter() - snapshot_started,
        "total_seconds": time.perf_counter() - started,
    }


# --------------------------------------------------------------------------- measuring (child process)


def measure(work: Path, size: int, sentences: list[str]) -> dict:
    from rag_core.retrieval import FusionConfig, Retriever
    from rag_core.search.engines import MemoryEngine
    from rag_core.search.filters import SearchFilter
    from rag_core.search.log import SearchLog

    baseline_rss = rss_mb()
    log = SearchLog(work / f"n{size}" / "data" / "search")
    collection = log.alias_target(ALIAS)
    engine = MemoryEngine(log, ALIAS, log_only, snapshot_in_background=False)
    started = time.perf_counter()
    served = engine.served()
    load_seconds = time.perf_counter() - started
    index = served.searcher
    index.prepare()  # what the follower thread computes before serving
    load_rss = rss_mb() - baseline_rss
    fusion = FusionConfig(method="convex", dense_weight=0.55, bm25_weight=0.45, candidates=100)
    tenant = SearchFilter("default")
    texts = query_texts()
    (segment,) = index.compacted().segments
    query_vectors = near_rows(segment.vectors, len(texts))

    retriever = Retriever(index, fusion)
    ours = {
        "dense": timed(lambda i: index.search_dense(query_vectors[i], 10, tenant), len(texts)),
        "bm25": timed(lambda i: index.search_bm25(texts[i], 10, tenant), len(texts)),
        "hybrid": timed(lambda i: retriever.retrieve(texts[i], query_vectors[i], 10, "hybrid", tenant), len(texts)),
    }

    # Freshness: 1,000 chunks written through the search log (what MilvusStore appends after Milvus took
    # them), then deleted; seconds until this process' engine serves the change.
    fresh = synthetic_rows(1000, 10 * size + 7, sentences, seed=size + 1)
    for row in fresh:
        row["dense"] = row["dense"].tolist()
    began = time.perf_counter()
    log.upserted(collection, fresh)
    while engine.served().rows != size + 1000:
        pass
    upsert_lag = time.perf_counter() - began
    after_writes = timed(
        lambda i: Retriever(engine.served().searcher, fusion).retrieve(
            texts[i], query_vectors[i], 10, "hybrid", tenant
        ),
        len(texts),
    )
    began = time.perf_counter()
    log.deleted(collection, [row["chunk_id"] for row in fresh])
    while engine.served().rows != size:
        pass
    delete_lag = time.perf_counter() - began
    log.save_base(collection, engine.served().searcher)  # leave the data dir as clean as it was
    return {
        "size": size,
        "load_seconds": load_seconds,
        "rss_mb": load_rss,
        "total_rss_mb": rss_mb(),
        "ours": {mode: (statistics.median(v), percentile(v, 95)) for mode, v in ours.items()},
        "upsert_lag_s": upsert_lag,
        "delete_lag_s": delete_lag,
        "after_writes_p50": statistics.median(after_writes),
    }


BM25S_MAX_ROWS = 300_000  # bm25s keeps every token as a Python int: a million chunks need more than 24 GB


def measure_floor(work: Path, size: int) -> dict:
    """The floor in a process of its own. Above BM25S_MAX_ROWS only faiss is measured (bm25s does not fit)."""
    import faiss
    import pyarrow as pa
    from floors import SearchFloor

    from rag_core.search.log import SearchLog
    from rag_core.search.memory import graph_vectors

    log = SearchLog(work / f"n{size}" / "data" / "search")
    _, folder = log.latest_base(log.alias_target(ALIAS))
    texts = query_texts()
    rows = pa.ipc.open_file(pa.memory_map(str(folder / "rows.arrow"))).read_all()
    if (folder / "graph.faiss").exists():
        graph = faiss.read_index(str(folder / "graph.faiss"))
        vectors = graph_vectors(graph)
    else:
        graph = None
        dense = rows.column("dense").combine_chunks()
        vectors = dense.flatten().to_numpy(zero_copy_only=False).reshape(-1, dense.type.list_size)
    lexical = size <= BM25S_MAX_ROWS
    floor = SearchFloor(vectors, rows.column("search_text").to_pylist() if lexical else [], graph)
    del rows
    query_vectors = near_rows(vectors, len(texts))
    latencies = {"dense": timed(lambda i: floor.dense(query_vectors[i]), len(texts))}
    if lexical:
        tokens = [floor.tokenize(text) for text in texts]
        latencies["bm25"] = timed(lambda i: floor.bm25(tokens[i]), len(texts))
        latencies["hybrid"] = timed(lambda i: floor.hybrid(query_vectors[i], tokens[i]), len(texts))
    return {mode: (statistics.median(v), percentile(v, 95)) for mode, v in latencies.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-dir", type=Path, required=True)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--milvus-rows", type=int, default=100_000, help="write sizes up to this through Milvus Lite")
    parser.add_argument(
        "--build-only-for-backend",
        default="",
        help="only build W/n<size>-<backend>: a build recorded as embedded with that backend, for bench_serving",
    )
    parser.add_argument("--measure", type=int, help=argparse.SUPPRESS)  # internal: one size, in a fresh process
    parser.add_argument("--floor", type=int, help=argparse.SUPPRESS)  # internal: the floor of one size
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work = args.work_dir.resolve()
    sentences = corpus_sentences()
    if args.measure:
        print(json.dumps(measure(work, args.measure, sentences)))
        return
    if args.floor:
        print(json.dumps(measure_floor(work, args.floor)))
        return
    if args.build_only_for_backend:
        for size in args.sizes:
            build(work, size, args.milvus_rows, sentences, args.build_only_for_backend)
            print(f"built {work / folder_name(size, args.build_only_for_backend)}")
        return
    results = []
    for size in args.sizes:
        if not (work / f"n{size}" / "data" / "search" / "aliases").exists():
            print(f"building n={size:,} …", flush=True)
            built = build(work, size, args.milvus_rows, sentences)
            seconds = f"{built['total_seconds']:.1f} s (snapshot {built['snapshot_seconds']:.1f} s)"
            print(f"  built in {seconds}", flush=True)
        result = {}
        for step in ("--measure", "--floor"):
            child = subprocess.run(
                [sys.executable, __file__, "--work-dir", str(work), step, str(size)],
                capture_output=True,
                text=True,
            )
            if child.returncode:
                raise SystemExit(f"{step} n={size} failed:\n{child.stderr}")
            measured = json.loads(child.stdout.strip().splitlines()[-1])
            result.update(measured if step == "--measure" else {"floor": measured})
        results.append(result)
        print(f"  measured n={size:,}", flush=True)

    print(
        "\n| chunks | load s | RSS MB | mode | ours p50 ms | ours p95 ms | floor p50 ms | floor p95 ms | p50 / floor |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for result in results:
        for mode in ("dense", "bm25", "hybrid"):
            ours, floor = result["ours"][mode], result["floor"].get(mode)
            floor_cells = f"{floor[0]:.2f} | {floor[1]:.2f} | {ours[0] / floor[0]:.2f}" if floor else "- | - | -"
            print(
                f"| {result['size']:,} | {result['load_seconds']:.1f} | {result['rss_mb']:.0f} | {mode} "
                f"| {ours[0]:.2f} | {ours[1]:.2f} | {floor_cells} |"
            )
    print("\n| chunks | 1,000 upserted: searchable after s | 1,000 deleted: gone after s "
          "| hybrid p50 just after the writes / settled |")
    print("|---|---|---|---|")
    for result in results:
        print(
            f"| {result['size']:,} | {result['upsert_lag_s']:.2f} | {result['delete_lag_s']:.2f} "
            f"| {result['after_writes_p50'] / result['ours']['hybrid'][0]:.2f} |"
        )


if __name__ == "__main__":
    main()
