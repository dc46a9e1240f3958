"""Serving benchmark: `/v1/retrieve` (hybrid, top 10, cache off) latency and throughput at 1, 8 and 32
concurrent clients, per search engine, next to the floor measured in the same run: a plain
`SentenceTransformer.encode` of the query, faiss (the same HNSW graph) and bm25s over the same rows, fused by
the same convex formula — in one process, no HTTP.

The index: `--data-dir` of an existing build — `evals/bench_indexing.py --keep DIR` (SciFact, real vectors)
or `evals/bench_scale.py --work-dir W` (then `W/n100000`: 100k synthetic chunks) — or, when it has none, a
fresh `rag index` of the vendored SciFact corpus there.

Engines: `memory` (the default for Milvus Lite: the API answers from its in-memory index) and `milvus`
(the production profile's code path: `MILVUS_URI` at a `milvus-lite server` over the same data, searched in
Milvus). The server runs as its own process (`rag-serve serve --workers N`), as users run it; the clients
are an asyncio load generator in this process, on the same two cores.

Run: .venv/bin/python evals/bench_serving.py --data-dir /tmp/scifact-index [--workers 2] [--engines memory milvus]
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

DATA = Path(__file__).parent / "datasets" / "scifact"
LEVELS = (1, 8, 32)


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def _client(port: int, key: str, bodies: list[bytes], cursor: list[int], results: list) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while cursor[0] < len(bodies):
            body = bodies[cursor[0]]
            cursor[0] += 1
            started = time.perf_counter()
            writer.write(
                b"POST /v1/retrieve HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\n"
                + f"x-api-key: {key}\r\ncontent-length: {len(body)}\r\n\r\n".encode()
                + body
            )
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            headers = head.lower().split(b"\r\n")
            length = next(int(line.split(b":", 1)[1]) for line in headers if line.startswith(b"content-length"))
            await reader.readexactly(length)
            results.append(((time.perf_counter() - started) * 1000, status))
    finally:
        writer.close()


def run_load(port: int, key: str, queries: list[str], clients: int) -> tuple[list[float], int, float]:
    """(latencies in ms, errors, seconds): `queries` sent over `clients` keep-alive connections."""
    bodies = [json.dumps({"query": q, "mode": "hybrid", "top_k": 10}).encode() for q in queries]
    results: list[tuple[float, int]] = []

    async def main() -> float:
        cursor = [0]
        started = time.perf_counter()
        await asyncio.gather(*(_client(port, key, bodies, cursor, results) for _ in range(clients)))
        return time.perf_counter() - started

    seconds = asyncio.run(main())
    return [ms for ms, _ in results], sum(status != 200 for _, status in results), seconds


def wait_ready(url: str, server: subprocess.Popen, timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(f"{url}/ready", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline or server.poll() is not None:
            raise SystemExit(f"the server at {url} did not become ready")
        time.sleep(0.5)


def floor_latencies(settings, queries: list[str]) -> list[float]:
    """encode (plain SentenceTransformer) + faiss + bm25s + convex fusion, in this process."""
    from floors import SearchFloor
    from sentence_transformers import SentenceTransformer

    from rag_core.models import ModelResolver
    from rag_core.search.engines import IndexConnection

    engine = IndexConnection.from_settings(settings).memory_engine()
    (segment,) = engine.served().searcher.compacted().segments
    floor = SearchFloor(segment.vectors, segment.table.column("search_text").to_pylist(), segment.graph)
    model_dir = ModelResolver.from_settings(settings).model_dir(settings.embedding_model)
    model = SentenceTransformer(str(model_dir), device="cpu", local_files_only=True)

    def once(query: str) -> list[int]:
        vector = model.encode([query], normalize_embeddings=True, convert_to_numpy=True)[0]
        return floor.hybrid(vector, floor.tokenize(query))

    for query in queries[:5]:
        once(query)
    latencies = []
    for query in queries:
        started = time.perf_counter()
        once(query)
        latencies.append((time.perf_counter() - started) * 1000)
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, required=True, help="folder with (or for) a build")
    parser.add_argument("--requests", type=int, default=240, help="requests per concurrency level")
    parser.add_argument("--milvus-requests", type=int, default=40, help="requests per level on the milvus engine")
    parser.add_argument("--workers", type=int, default=2, help="uvicorn worker processes")
    parser.add_argument("--engines", nargs="+", default=["memory", "milvus"], choices=["memory", "milvus"])
    parser.add_argument("--backend", default="", help="RAG_EMBEDDING_BACKEND for the server (default: its own)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from rag_core.querylog import ServingDatabase
    from rag_core.settings import Settings

    work = args.data_dir.resolve()
    settings = Settings(data_dir=work / "data", documents_dir=work / "documents", dagster_home=work / "dagster")
    if not (settings.data_dir / "milvus.db").exists() and not settings.search_dir.exists():
        print(f"no index in {work}: building it with evals/bench_indexing.py --keep {work}", flush=True)
        subprocess.run(
            [sys.executable, str(Path(__file__).with_name("bench_indexing.py")), "--keep", str(work)], check=True
        )
    with gzip.open(DATA / "queries.jsonl.gz") as handle:
        queries = [record["text"] for record in map(json.loads, handle)]
    needed = args.requests * (len(LEVELS) + 1)
    if len(queries) < needed:
        raise SystemExit(f"only {len(queries)} distinct queries; lower --requests to {len(queries) // 4}")
    floor_queries, *level_queries = (queries[i * args.requests : (i + 1) * args.requests] for i in range(4))

    floor = floor_latencies(settings, floor_queries)
    rows = [("floor: encode + faiss + bm25s + fusion, in-process", "-", 1, floor, 0, sum(floor) / 1000)]

    key = ServingDatabase(settings.resolved_serving_db_url).create_key(settings.default_tenant, "bench")
    for engine in args.engines:
        environment = {
            **os.environ,
            "RAG_DATA_DIR": str(settings.data_dir),
            "RAG_DOCUMENTS_DIR": str(settings.documents_dir),
            "RAG_RATE_LIMIT_PER_MINUTE": "0",
            "RAG_SEARCH_ENGINE": engine,
            "REDIS_URL": "",
        }
        if args.backend:
            environment["RAG_EMBEDDING_BACKEND"] = args.backend
        helpers: list[subprocess.Popen] = []
        if engine == "milvus":  # the production profile's path: a Milvus endpoint over gRPC
            milvus_port = free_port()
            helpers.append(
                subprocess.Popen(
                    [str(Path(sys.executable).with_name("milvus-lite")), "server", "--data-dir",
                     str(settings.data_dir / "milvus.db"), "--host", "127.0.0.1", "--port", str(milvus_port)],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
            environment["MILVUS_URI"] = f"http://127.0.0.1:{milvus_port}"
        port = free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "rag_serving.cli", "serve", "--port", str(port), "--workers", str(args.workers)],
            env=environment,
            stderr=subprocess.DEVNULL,
        )
        requests = args.requests if engine == "memory" else args.milvus_requests
        try:
            wait_ready(f"http://127.0.0.1:{port}", server)
            run_load(port, key, floor_queries[:16], 4)  # warm every worker
            for clients, batch in zip(LEVELS, level_queries, strict=True):
                latencies, errors, seconds = run_load(port, key, batch[:requests], clients)
                rows.append(("/v1/retrieve hybrid, cache off", engine, clients, latencies, errors, seconds))
                print(f"  {engine}, {clients} clients: done", flush=True)
            if engine == "memory":
                latencies, errors, seconds = run_load(port, key, level_queries[0][:requests], 1)
                rows.append(("/v1/retrieve hybrid, cached (the 1-client queries again)", engine, 1, latencies,
                             errors, seconds))
        finally:
            for process in (server, *helpers):
                process.terminate()
                process.wait(timeout=60)

    floor_p50 = statistics.median(floor)
    print(f"\n{len(floor_queries)} SciFact queries per row (milvus engine: {args.milvus_requests}), top 10, "
          f"index {settings.data_dir}, {args.workers} worker(s)\n")
    print("| what | engine | clients | p50 ms | p95 ms | p99 ms | req/s | errors | p50 / floor p50 |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, engine, clients, latencies, errors, seconds in rows:
        p50 = statistics.median(latencies)
        print(
            f"| {name} | {engine} | {clients} | {p50:.1f} | {percentile(latencies, 95):.1f} "
            f"| {percentile(latencies, 99):.1f} | {len(latencies) / seconds:.1f} | {errors} | {p50 / floor_p50:.2f} |"
        )


if __name__ == "__main__":
    main()
