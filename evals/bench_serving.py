"""Serving benchmark: `/v1/retrieve` (hybrid) latency and throughput at 1, 8 and 32 concurrent clients
against the SciFact index, next to the floor measured in the same run — the query encode plus the direct
Milvus dense + BM25 searches, no HTTP — and the cached p50.

The index: `--data-dir` of an existing build (e.g. `evals/bench_indexing.py --keep /tmp/scifact-index`),
or a fresh `rag index` of the vendored corpus there when it has none. The server runs as its own process
(`rag-serve serve`), as users run it; the clients are threads here, on the same two cores.

Run: .venv/bin/python evals/bench_serving.py --data-dir /tmp/scifact-index
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

DATA = Path(__file__).parent / "datasets" / "scifact"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_load(url: str, key: str, queries: list[str], clients: int) -> tuple[list[float], int, float]:
    """(latencies in ms, errors, seconds) for `queries` spread over `clients` threads."""
    latencies: list[float] = []
    errors = 0

    def one(client: httpx.Client, query: str) -> tuple[float, bool]:
        started = time.perf_counter()
        try:
            response = client.post("/v1/retrieve", json={"query": query, "mode": "hybrid", "top_k": 10})
            ok = response.status_code == 200
        except httpx.HTTPError:
            ok = False
        return (time.perf_counter() - started) * 1000, ok

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    with httpx.Client(base_url=url, headers={"X-API-Key": key}, timeout=60, limits=limits) as client:
        started = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            for latency, ok in pool.map(lambda q: one(client, q), queries):
                latencies.append(latency)
                errors += not ok
        elapsed = time.perf_counter() - started
    return latencies, errors, elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, required=True, help="folder with (or for) the SciFact build")
    parser.add_argument("--requests", type=int, default=240, help="requests per concurrency level")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from rag_core.embedding import Embedder
    from rag_core.querylog import ServingDatabase
    from rag_core.retrieval import FusionConfig, Retriever, filter_expression
    from rag_core.settings import Settings
    from rag_core.store import MilvusStore, milvus_client

    work = args.data_dir.resolve()
    settings = Settings(data_dir=work / "data", documents_dir=work / "documents", dagster_home=work / "dagster")
    if not (settings.data_dir / "milvus.db").exists():
        print(f"no index in {work}: building it with evals/bench_indexing.py --keep {work}", flush=True)
        subprocess.run(
            [sys.executable, str(Path(__file__).with_name("bench_indexing.py")), "--keep", str(work)], check=True
        )
    with gzip.open(DATA / "queries.jsonl.gz") as handle:
        queries = [record["text"] for record in map(json.loads, handle)]
    levels = (1, 8, 32)
    needed = args.requests * (len(levels) + 1)
    if len(queries) < needed:
        raise SystemExit(f"only {len(queries)} distinct queries; lower --requests to {len(queries) // 4}")
    floor_queries, *level_queries = (queries[i * args.requests : (i + 1) * args.requests] for i in range(4))

    # The floor: encode + the two Milvus searches the server fuses, with the server's fusion settings (the
    # same candidates per list), in this process, no HTTP, no cache.
    embedder = Embedder(settings.resolved_model_dir)
    embedder.encode(["warm up"])
    floor = []
    with milvus_client(settings.resolved_milvus_uri) as client:
        store = MilvusStore(client, settings.collection_alias)
        retriever = Retriever(store, store.alias_target(), FusionConfig.from_settings(settings))
        expression = filter_expression({}, settings.default_tenant)
        for query in floor_queries[:5]:
            retriever.retrieve(query, embedder.encode([query])[0], 10, "hybrid", expression)
        for query in floor_queries:
            started = time.perf_counter()
            retriever.retrieve(query, embedder.encode([query])[0], 10, "hybrid", expression)
            floor.append((time.perf_counter() - started) * 1000)
    rows = [("floor: encode + Milvus dense + BM25 (in-process)", 1, floor, 0, sum(floor) / 1000)]

    key = ServingDatabase(settings.resolved_serving_db_url).create_key(settings.default_tenant, "bench")
    port = free_port()
    environment = {
        **os.environ,
        "RAG_DATA_DIR": str(settings.data_dir),
        "RAG_DOCUMENTS_DIR": str(settings.documents_dir),
        "RAG_RATE_LIMIT_PER_MINUTE": "0",
        "REDIS_URL": "",
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "rag_serving.cli", "serve", "--port", str(port)],
        env=environment,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise SystemExit("the server did not become ready")
            time.sleep(0.5)
        run_load(url, key, floor_queries[:10], 1)  # warm-up
        for clients, batch in zip(levels, level_queries, strict=True):
            latencies, errors, seconds = run_load(url, key, batch, clients)
            rows.append(
                (f"/v1/retrieve hybrid, {clients} client{'s' * (clients > 1)}", clients, latencies, errors, seconds)
            )
        latencies, errors, seconds = run_load(url, key, level_queries[0], 1)
        rows.append(("/v1/retrieve hybrid, cached (repeat of the 1-client queries)", 1, latencies, errors, seconds))
    finally:
        server.terminate()
        server.wait(timeout=30)

    floor_p50 = statistics.median(floor)
    print(f"\n{len(floor_queries)} SciFact queries per row, top 10, index {settings.resolved_milvus_uri}\n")
    print("| what | clients | p50 ms | p95 ms | p99 ms | req/s | errors | p50 / floor p50 |")
    print("|---|---|---|---|---|---|---|---|")
    for name, clients, latencies, errors, seconds in rows:
        p50 = statistics.median(latencies)
        print(
            f"| {name} | {clients} | {p50:.1f} | {percentile(latencies, 95):.1f} | {percentile(latencies, 99):.1f} "
            f"| {len(latencies) / seconds:.1f} | {errors} | {p50 / floor_p50:.2f} |"
        )


if __name__ == "__main__":
    main()
