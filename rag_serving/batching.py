"""Query encoding shared by concurrent requests: while one batch of queries runs through the model, the
queries that arrive meanwhile wait, then go through together as the next batch.

There is no timer: a lone request is encoded at once (no added latency at one client), and under load a
forward pass over eight short queries costs far less than eight passes. The thread whose query heads the
queue runs the next batch, so no extra thread is needed and no request waits behind batches after its own.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from rag_core.embedding import Embedder

MAX_BATCH = 32


@dataclass(eq=False)
class _Query:
    embedder: Embedder
    text: str
    wake: threading.Event = field(default_factory=threading.Event)
    vector: np.ndarray | None = None
    error: BaseException | None = None


class QueryBatcher:
    def __init__(self, max_batch: int = MAX_BATCH) -> None:
        self.max_batch = max_batch
        self._lock = threading.Lock()
        self._queue: deque[_Query] = deque()
        self._busy = False
        self.batches = 0  # how many forward passes ran (metrics and tests)
        self.encoded = 0

    def encode(self, embedder: Embedder, text: str) -> np.ndarray:
        query = _Query(embedder, text)
        with self._lock:
            self._queue.append(query)
            if not self._busy:
                self._busy = True
                query.wake.set()  # nobody is encoding: this request leads
        query.wake.wait()
        if query.vector is None and query.error is None:
            self._lead()
        if query.error is not None:
            raise query.error
        return query.vector

    def _lead(self) -> None:
        with self._lock:
            batch = [self._queue.popleft() for _ in range(min(self.max_batch, len(self._queue)))]
        try:
            by_model: dict[int, list[_Query]] = {}
            for query in batch:
                by_model.setdefault(id(query.embedder), []).append(query)
            for queries in by_model.values():
                try:
                    vectors = queries[0].embedder.encode([query.text for query in queries])
                except Exception as error:  # every request of the batch gets the error, none hangs
                    for query in queries:
                        query.error = error
                    continue
                for query, vector in zip(queries, vectors, strict=True):
                    query.vector = vector
            self.batches += 1
            self.encoded += len(batch)
        finally:
            with self._lock:
                if self._queue:
                    self._queue[0].wake.set()  # the next waiting request leads the next batch
                else:
                    self._busy = False
            for query in batch:
                query.wake.set()
