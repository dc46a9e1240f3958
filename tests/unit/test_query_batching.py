"""Concurrent query encodings share forward passes, and each request still gets its own query's vector."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from rag_core.embedding import Embedder
from rag_core.settings import bundled_model_dir
from rag_serving.batching import QueryBatcher

QUERIES = [f"does protein {n} regulate cell growth in tissue sample {n * 7}?" for n in range(48)]


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder(bundled_model_dir())


def test_concurrent_queries_are_batched_and_answered_with_their_own_vectors(embedder):
    alone = embedder.encode(QUERIES)
    batcher = QueryBatcher(max_batch=8)
    start = threading.Barrier(16)

    def encode(index: int) -> tuple[int, np.ndarray]:
        if index < 16:
            start.wait()  # the first 16 arrive together
        return index, batcher.encode(embedder, QUERIES[index])

    with ThreadPoolExecutor(16) as pool:
        results = dict(pool.map(encode, range(len(QUERIES))))
    for index, vector in results.items():
        assert float(vector @ alone[index]) > 0.999, QUERIES[index]
    assert batcher.encoded == len(QUERIES)
    assert batcher.batches < len(QUERIES)  # forward passes were shared


def test_a_lone_query_is_encoded_at_once_and_a_failure_reaches_every_waiter(embedder):
    batcher = QueryBatcher()
    vector = batcher.encode(embedder, "a single query")
    assert batcher.batches == 1 and vector.shape == (embedder.dimension,)

    # A batch the model rejects (a text that is not a string) fails every request in it; none hangs.
    with ThreadPoolExecutor(4) as pool:
        failures = list(pool.map(lambda _: _error_of(batcher, embedder), range(4)))
    assert all(failure != "no error" for failure in failures)
    assert batcher.encode(embedder, "still serving").shape == (embedder.dimension,)


def _error_of(batcher: QueryBatcher, embedder: Embedder) -> str:
    try:
        batcher.encode(embedder, None)  # type: ignore[arg-type]
    except Exception as error:  # whatever the tokenizer raises
        return type(error).__name__
    return "no error"
