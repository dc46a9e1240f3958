"""Embedding backends on SciFact: torch, onnx (fp32), onnx-int8 and openvino (RAG_EMBEDDING_BACKEND).

For the first N abstracts (title + text, as the pipeline embeds them; long ones are truncated at the
model's 256 tokens) each backend's `Embedder.encode` is timed and compared with the floor, a plain
`SentenceTransformer.encode` of the same texts in the same run (same batch size). Fidelity is the cosine
of each vector with the torch backend's. Query latency is one `encode([query])` per SciFact test query
(300), after a warm-up. chunks/CPU-s divides by this process's CPU time instead of wall time: on a
machine shared with other jobs it is the steadier number (idle onnxruntime threads sleep, not spin).
The ONNX export/quantization/OpenVINO conversion happens once, before timing, into --onnx-dir (its seconds
are the `load s` column on a first run).

--extras adds rows that are not backends, for comparison: `torch-bf16` is sentence-transformers with the
weights in bfloat16 (torch's oneDNN AMX kernels on a CPU that has them).

With --repeat R every measurement runs R times, interleaved across backends, and the best run is kept
(this machine may be shared). Prints a markdown table.
Run: .venv/bin/python evals/bench_embedder.py [--limit 1000] [--batch-size 64] [--repeat 1] [--extras torch-bf16]
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

SCIFACT = Path(__file__).parent / "datasets" / "scifact"
BACKENDS = ("torch", "onnx", "onnx-int8", "openvino")
EXTRAS = ("torch-bf16",)


def load_texts(limit: int) -> list[str]:
    from rag_core.chunking import search_text

    with gzip.open(SCIFACT / "corpus.jsonl.gz", "rt") as corpus:
        records = [json.loads(line) for line in corpus]
    return [search_text(r["title"], r["text"]) for r in records[: limit or None]]


def load_queries() -> list[str]:
    with (SCIFACT / "qrels" / "test.tsv").open() as handle:
        rows = csv.reader(handle, delimiter="\t")
        next(rows, None)
        judged = list(dict.fromkeys(row[0] for row in rows))
    with gzip.open(SCIFACT / "queries.jsonl.gz", "rt") as handle:
        queries = {r["_id"]: r["text"] for r in map(json.loads, handle)}
    return [queries[q] for q in judged if q in queries]


def timed(encode, texts: list[str]) -> tuple[np.ndarray, float, float]:
    """Vectors, wall seconds, and CPU seconds of this process (steadier on a shared machine)."""
    started, cpu = time.perf_counter(), time.process_time()
    vectors = encode(texts)
    return vectors, time.perf_counter() - started, time.process_time() - cpu


def query_latency(encode, queries: list[str]) -> np.ndarray:
    for query in queries[:20]:
        encode([query])
    samples = []
    for query in queries:
        started = time.perf_counter()
        encode([query])
        samples.append(time.perf_counter() - started)
    return np.array(samples) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=0, help="only the first N abstracts (0 = all 5,183)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=1, help="runs per measurement; the best is kept")
    parser.add_argument("--backends", default=",".join(BACKENDS), help=f"comma-separated, from {','.join(BACKENDS)}")
    parser.add_argument("--extras", default="", help=f"comma-separated rows that are not backends: {','.join(EXTRAS)}")
    parser.add_argument("--onnx-dir", type=Path, help="export cache (default: a temporary folder)")
    args = parser.parse_args()

    import onnxruntime
    import openvino
    import torch
    from sentence_transformers import SentenceTransformer

    from rag_core.embedding import Embedder
    from rag_core.onnx_embedding import default_threads
    from rag_core.settings import bundled_model_dir

    backends = [name.strip() for name in args.backends.split(",") if name.strip()]
    extras = [name.strip() for name in args.extras.split(",") if name.strip()]
    if unknown := set(extras) - set(EXTRAS):
        parser.error(f"unknown --extras {', '.join(sorted(unknown))}")
    texts, queries = load_texts(args.limit), load_queries()
    model_dir = bundled_model_dir()
    onnx_dir = args.onnx_dir or Path(tempfile.mkdtemp(prefix="bench-embedder-"))
    print(
        f"{len(texts)} SciFact abstracts, {len(queries)} queries, batch size {args.batch_size}, torch "
        f"{torch.__version__} ({torch.get_num_threads()} threads), onnxruntime {onnxruntime.__version__} "
        f"({default_threads()} threads), openvino {openvino.get_version().split('-')[0]}, "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs",
        flush=True,
    )

    floor = SentenceTransformer(str(model_dir), device="cpu", local_files_only=True)

    def floor_encode(batch: list[str]) -> np.ndarray:
        return floor.encode(batch, batch_size=args.batch_size, normalize_embeddings=True, convert_to_numpy=True)

    embedders, load_seconds = {}, {}
    for backend in backends:
        started = time.perf_counter()
        embedders[backend] = Embedder(model_dir, batch_size=args.batch_size, backend=backend, onnx_dir=onnx_dir).load()
        load_seconds[backend] = time.perf_counter() - started
    encoders = {"floor": floor_encode, **{name: embedder.encode for name, embedder in embedders.items()}}
    if "torch-bf16" in extras:
        started = time.perf_counter()
        bf16 = SentenceTransformer(
            str(model_dir), device="cpu", local_files_only=True, model_kwargs={"torch_dtype": torch.bfloat16}
        )
        load_seconds["torch-bf16"] = time.perf_counter() - started

        def bf16_encode(batch: list[str]) -> np.ndarray:
            vectors = bf16.encode(batch, batch_size=args.batch_size, normalize_embeddings=True, convert_to_numpy=True)
            vectors = vectors.astype(np.float32)
            return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)  # normalised in bf16, again in fp32

        encoders["torch-bf16"] = bf16_encode
    if "openvino" in embedders:
        print(f"openvino runs in {embedders['openvino'].onnx.model.precision}", flush=True)
    for encode in encoders.values():
        encode(texts[:16])

    best_seconds: dict[str, float] = {}
    best_cpu: dict[str, float] = {}
    best_latency: dict[str, np.ndarray] = {}
    vectors: dict[str, np.ndarray] = {}
    for round_number in range(args.repeat):
        for name, encode in encoders.items():
            vectors[name], seconds, cpu = timed(encode, texts)
            best_seconds[name] = min(seconds, best_seconds.get(name, float("inf")))
            best_cpu[name] = min(cpu, best_cpu.get(name, float("inf")))
            latency = query_latency(encode, queries)
            if name not in best_latency or np.median(latency) < np.median(best_latency[name]):
                best_latency[name] = latency
            print(
                f"round {round_number + 1}: {name} {len(texts) / seconds:.1f} chunks/s, "
                f"{len(texts) / cpu:.1f} chunks/CPU-s, query p50 {np.median(latency):.2f} ms",
                flush=True,
            )

    reference = vectors["torch"] if "torch" in vectors else vectors["floor"]
    rows = [
        "| backend | chunks/s | × floor | chunks/CPU-s | × floor (CPU) | min cos vs torch | mean cos vs torch "
        "| query p50 ms | query p95 ms | load s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in encoders:
        cosines = np.sum(vectors[name] * reference, axis=1)
        label = "plain SentenceTransformer.encode (floor)" if name == "floor" else name
        loaded = f"{load_seconds[name]:.1f}" if name in load_seconds else ""
        p50, p95 = np.percentile(best_latency[name], [50, 95])
        rows.append(
            f"| {label} | {len(texts) / best_seconds[name]:.1f} | {best_seconds['floor'] / best_seconds[name]:.2f} | "
            f"{len(texts) / best_cpu[name]:.1f} | {best_cpu['floor'] / best_cpu[name]:.2f} | {cosines.min():.4f} | "
            f"{cosines.mean():.5f} | {p50:.2f} | {p95:.2f} | {loaded} |"
        )
    print("\n".join(["", *rows]))


if __name__ == "__main__":
    main()
