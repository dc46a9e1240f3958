"""What tracing an answer (RAG_TRACING, rag_core.tracing) costs: the part inside the request (building the
three spans after the answer) per answer, and how many traces per second MLflow's background exporter
writes to the tracking store, which is CPU the serving process spends beside its requests.

Each answer has 5 retrieved chunks of ~1,000 characters, like a top_k=5 /v1/query. Prints a table.

Run:  nice .venv/bin/python evals/bench_tracing.py --answers 500
      nice .venv/bin/python evals/bench_tracing.py --tracking-uri http://127.0.0.1:5000   (a tracking server)
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from rag_core.generation import Answer
from rag_core.retrieval import RetrievedChunk
from rag_core.tracing import AnsweredQuery, AnswerTracer
from rag_core.tracking import Tracker


def _answered(number: int) -> AnsweredQuery:
    chunks = [
        RetrievedChunk(
            f"doc-{number}#{rank}", f"doc-{number}", "A title", "lorem ipsum " * 85, "a.md", 0.5, 0, 1020, "t"
        )
        for rank in range(5)
    ]
    now = time.time_ns()
    return AnsweredQuery(
        query_id=str(uuid.uuid4()),
        tenant="default",
        question=f"What does question {number} ask?",
        mode="hybrid",
        top_k=5,
        index_version="1",
        cached=False,
        chunks=chunks,
        answer=Answer("An answer sentence [1].", [1], "extractive/best-sentences"),
        started_ns=now - 30_000_000,
        retrieve_ns=(now - 30_000_000, now - 10_000_000),
        generate_ns=(now - 10_000_000, now),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--answers", type=int, default=500)
    parser.add_argument("--tracking-uri", default="", help="default: a SQLite store in a temp folder (embedded)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        uri = args.tracking_uri or f"sqlite:///{Path(folder) / 'mlflow.db'}"
        tracer = AnswerTracer(Tracker(uri, Path(folder) / "artifacts"))
        started = time.perf_counter()
        tracer.warm_up()
        warm_s = time.perf_counter() - started
        assert tracer.ready.is_set(), "the tracer did not warm up: see the log"
        tracer.record(_answered(-1))  # the first trace sets up the exporter
        tracer.flush()
        queries = [_answered(number) for number in range(args.answers)]
        in_request = []
        started = time.perf_counter()
        for query in queries:
            began = time.perf_counter()
            tracer.record(query)
            in_request.append((time.perf_counter() - began) * 1000)
        recorded_s = time.perf_counter() - started
        tracer.flush()
        written_s = time.perf_counter() - started
    in_request.sort()
    print(f"| tracking store | {uri.split(':')[0]} |")
    print("|---|---|")
    print(f"| warm-up (import mlflow, experiment) | {warm_s:.1f} s |")
    print(
        f"| in the request, p50 / p99 per answer | {statistics.median(in_request):.2f} / "
        f"{in_request[int(len(in_request) * 0.99) - 1]:.2f} ms |"
    )
    print(f"| {args.answers} answers recorded in | {recorded_s:.2f} s |")
    print(f"| ... and written by the exporter in | {written_s:.2f} s ({args.answers / written_s:.0f} traces/s) |")


if __name__ == "__main__":
    main()
