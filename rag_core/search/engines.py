"""Search engines: where a query's dense and BM25 searches run. Both give the same results contract.

- `MilvusEngine` searches in Milvus: the engine for a Milvus server or cluster.
- `MemoryEngine` answers from an in-memory index of the served build (rag_core.search.memory), kept fresh
  from the search log (rag_core.search.log) that every write to Milvus Lite appends to. It never holds the
  Lite file, so `dagster dev`, `rag index`, `rag-serve` and evaluation work at the same time.

`RAG_SEARCH_ENGINE=auto` picks memory for Milvus Lite (a `.db` file, or `milvus-lite server`, whose
version string says so) and milvus for a real Milvus.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Protocol

import pyarrow as pa
from pymilvus import MilvusClient
from threadpoolctl import threadpool_limits

from rag_core.build_record import BuildRecord
from rag_core.search.analyzer import analyzed
from rag_core.search.filters import SearchFilter
from rag_core.search.log import SearchLog
from rag_core.search.memory import ROW_FIELDS, MemoryIndex, row_schema, rows_table
from rag_core.store import OUTPUT_FIELDS, Hit, MilvusStore, is_lite_uri, milvus_client, probe

log = logging.getLogger(__name__)
COMPACT_AFTER_ROWS = 5_000  # changes applied since the base before a process writes a new base


class IndexNotReady(RuntimeError):
    """Nothing is served yet (no alias), or the served build cannot be read; the message names the fix."""


class Searcher(Protocol):
    analyzer: str  # the build's BM25 analyzer: a query is analyzed by it before BM25 matches its terms

    def search_dense(self, vector: Sequence[float], limit: int, search_filter: SearchFilter) -> list[Hit]: ...

    def search_bm25(self, query: str, limit: int, search_filter: SearchFilter) -> list[Hit]: ...

    def doc_ids(self) -> set[str]: ...

    def row_table(self, fields: Sequence[str]) -> pa.Table: ...

    def matching_rows(self, search_filter: SearchFilter) -> list[dict]: ...


@dataclass(frozen=True)
class Served:
    """One resolution of the alias: the build, its properties, and a searcher bound to exactly that build."""

    collection: str
    properties: dict[str, str]
    version: str  # changes whenever the served rows change (result caches key on it)
    rows: int
    searcher: Searcher = field(compare=False, repr=False)


def is_lite(client: MilvusClient) -> bool:
    """Milvus Lite, as a file or as `milvus-lite server`, reports itself in its version string."""
    return str(client.get_server_version()).startswith("milvus_lite")


@lru_cache(maxsize=8)
def _server_is_lite(uri: str, token: str, timeout_s: float) -> bool:
    with milvus_client(uri, token, timeout_s) as client:
        return is_lite(client)


@dataclass(frozen=True)
class IndexConnection:
    """Where the index lives and how to search it: built once from Settings (or a Dagster resource)."""

    uri: str
    token: str
    alias: str
    search_dir: Path
    lock_timeout_s: float = 120.0
    engine_setting: str = "auto"

    @classmethod
    def from_settings(cls, settings) -> IndexConnection:
        return cls(
            settings.resolved_milvus_uri,
            settings.milvus_token,
            settings.collection_alias,
            settings.search_dir,
            settings.milvus_lock_timeout_s,
            settings.search_engine,
        )

    def lite(self) -> bool:
        return is_lite_uri(self.uri) or _server_is_lite(self.uri, self.token, self.lock_timeout_s)

    @contextlib.contextmanager
    def store(self) -> Iterator[MilvusStore]:
        """A store for one block of work. On Milvus Lite every write is also appended to the search log."""
        changes = SearchLog(self.search_dir) if self.lite() else None
        with milvus_client(self.uri, self.token, self.lock_timeout_s) as client:
            yield MilvusStore(client, self.alias, changes)

    def probe(self) -> None:
        """Raise MilvusUnavailable unless the Milvus server answers now. A Lite file is not probed: opening
        it would take the lock its writers need, and it cannot be down while its disk is there."""
        if not is_lite_uri(self.uri):
            probe(self.uri, self.token)

    @property
    def engine(self) -> str:
        """`memory` or `milvus`: the setting, with `auto` resolved by the kind of Milvus."""
        if self.engine_setting != "auto":
            return self.engine_setting
        return "memory" if self.lite() else "milvus"

    def memory_engine(self) -> MemoryEngine:
        return _memory_engine(self)

    def open_engine(self, stack: contextlib.ExitStack) -> MemoryEngine | MilvusEngine:
        """The engine this deployment searches with. The Milvus engine keeps one connection open in `stack`;
        the memory engine opens Milvus only to read a build the search log has never seen."""
        if self.engine == "memory":
            return self.memory_engine()
        return MilvusEngine(stack.enter_context(self.store()))


@lru_cache(maxsize=4)
def _memory_engine(connection: IndexConnection) -> MemoryEngine:
    """One in-memory engine per process and index: its loaded builds are shared by every caller."""
    return MemoryEngine(SearchLog(connection.search_dir), connection.alias, connection.store)


# --------------------------------------------------------------------------- Milvus


@dataclass(frozen=True)
class MilvusSearcher:
    store: MilvusStore
    collection: str
    analyzer: str  # the build's BM25 analyzer (BuildRecord.analyzer)

    def search_dense(self, vector: Sequence[float], limit: int, search_filter: SearchFilter) -> list[Hit]:
        return self.store.search_dense(self.collection, vector, limit, search_filter.expression())

    def search_bm25(self, query: str, limit: int, search_filter: SearchFilter) -> list[Hit]:
        return self.store.search_bm25(
            self.collection, analyzed(query, self.analyzer), limit, search_filter.expression()
        )

    def doc_ids(self) -> set[str]:
        return self.store.doc_ids(self.collection)

    def matching_rows(self, search_filter: SearchFilter) -> list[dict]:
        return list(self.store.rows_where(self.collection, search_filter.expression(), OUTPUT_FIELDS))

    def row_table(self, fields: Sequence[str]) -> pa.Table:
        schema = row_schema(fields)
        return pa.Table.from_pylist(list(self.store.all_rows(self.collection, list(fields))), schema=schema)


class MilvusEngine:
    name = "milvus"

    def __init__(self, store: MilvusStore) -> None:
        self.store = store

    def searcher(self, collection: str, properties: dict[str, str] | None = None) -> MilvusSearcher:
        """A searcher bound to `collection` (pass its properties when they are at hand: saves a round trip)."""
        if properties is None:
            properties = self.store.collection_properties(collection)
        return MilvusSearcher(self.store, collection, BuildRecord.from_properties(properties).analyzer)

    def served(self) -> Served:
        collection = self.store.alias_target()
        if collection is None:
            raise IndexNotReady(f"alias {self.store.alias!r} does not exist — build the index first (`rag index`)")
        properties = self.store.collection_properties(collection)
        return Served(
            collection,
            properties,
            BuildRecord.from_properties(properties).index_version,
            self.store.count(collection),
            self.searcher(collection, properties),
        )

    def build(self, collection: str) -> Served:
        """Another build of the alias, resolved like the served one (an A/B experiment's arm serves it)."""
        if not self.store.has_collection(collection):
            raise IndexNotReady(f"collection {collection} does not exist — `rag builds` lists the builds")
        properties = self.store.collection_properties(collection)
        record = BuildRecord.from_properties(properties)
        rows = self.store.count(collection)
        return Served(collection, properties, record.index_version, rows, self.searcher(collection, properties))


# --------------------------------------------------------------------------- in memory


class MemoryEngine:
    """In-memory indexes of this alias' builds, loaded from the search log (or, for a build the log has
    never seen, from Milvus once) and brought up to date on every `served()` / `refresh()`."""

    name = "memory"

    def __init__(
        self,
        search_log: SearchLog,
        alias: str,
        open_store: Callable[[], AbstractContextManager[MilvusStore]],
        snapshot_in_background: bool = True,
    ) -> None:
        self.log = search_log
        self.snapshot_in_background = snapshot_in_background
        self.alias = alias
        self.open_store = open_store
        # One query's matrix-vector products are far too small for BLAS threads: waking them costs
        # milliseconds when the other core is busy (measured: exact dense p95 8.5 ms → 0.5 ms at 10k rows).
        threadpool_limits(1, user_api="blas")
        self._indexes: dict[str, MemoryIndex] = {}
        self._lock = threading.Lock()
        self._compacting: set[str] = set()
        self._kept: frozenset[str] = frozenset()  # builds an A/B experiment serves beside the served one

    def served(self) -> Served:
        collection = self.log.alias_target(self.alias)
        if collection is None:
            collection = self._adopt_alias_from_milvus()
        index = self.index(collection)
        properties = self.log.properties(collection)
        properties = properties[0] if properties else {}
        return Served(
            collection,
            properties,
            f"{BuildRecord.from_properties(properties).index_version}~{index.seq}",
            index.rows,
            index,
        )

    def build(self, collection: str) -> Served:
        """Another build of the alias, resolved like `served()` (an A/B experiment's arm serves it)."""
        index = self.index(collection)
        recorded = self.log.properties(collection)
        properties = recorded[0] if recorded else {}
        version = f"{BuildRecord.from_properties(properties).index_version}~{index.seq}"
        return Served(collection, properties, version, index.rows, index)

    def keep(self, collections: frozenset[str]) -> None:
        """Keep these builds in memory beside the served one: the arms of a running experiment would
        otherwise evict each other, and each reload reads the whole build."""
        self._kept = collections

    def searcher(self, collection: str) -> MemoryIndex:
        return self.index(collection)

    def index(self, collection: str) -> MemoryIndex:
        """The collection's index with every logged change applied (loads it on first use)."""
        with self._lock:
            current = self._indexes.get(collection)
            updated = self._load(collection) if current is None else self._catch_up(collection, current)
            if updated is not current:
                # Keep the served build and this one; older builds' memory goes.
                served = self.log.alias_target(self.alias)
                self._indexes = {
                    name: idx for name, idx in self._indexes.items() if name == served or name in self._kept
                }
                self._indexes[collection] = updated
                updated.prepare()  # here (the follower thread), not in the first query that reads the new version
        self._maybe_compact(collection, updated)
        return updated

    def _adopt_alias_from_milvus(self) -> str:
        with self.open_store() as store:
            collection = store.alias_target()
        if collection is None:
            raise IndexNotReady(f"alias {self.alias!r} does not exist — build the index first (`rag index`)")
        self.log.adopt_alias(self.alias, collection)
        return collection

    def _load(self, collection: str) -> MemoryIndex:
        started = time.perf_counter()
        recorded = self.log.properties(collection)
        base = self.log.load_base(collection)
        if base is None and not (recorded and recorded[1]):
            base = self._bootstrap(collection)
        index = base or MemoryIndex.build(*rows_table([]), seq=0)
        recorded = self.log.properties(collection)
        analyzer = BuildRecord.from_properties(recorded[0] if recorded else {}).analyzer
        index = self._catch_up(collection, replace(index, analyzer=analyzer))
        log.info("loaded %s in memory: %d rows in %.2f s", collection, index.rows, time.perf_counter() - started)
        return index

    def _bootstrap(self, collection: str) -> MemoryIndex:
        """A build the log never saw from its creation: read every row from Milvus once, then snapshot it."""
        log.info("reading %s from Milvus to build its in-memory index", collection)
        seq = self.log.last_seq(collection)  # changes logged after this are applied on top (idempotently)
        with self.open_store() as store:
            if not store.has_collection(collection):
                raise IndexNotReady(f"collection {collection} does not exist — rebuild it with `rag index`")
            properties = store.collection_properties(collection)
            rows = list(store.all_rows(collection, [*ROW_FIELDS, "dense"]))
        self.log.set_properties(collection, properties)
        index = MemoryIndex.build(*rows_table(rows), seq=seq)
        self.log.save_base(collection, index)
        return index

    def _catch_up(self, collection: str, index: MemoryIndex) -> MemoryIndex:
        changes = self.log.changes(collection, index.seq)
        if changes is None:  # compacted past us: start again from the newest base
            return self._load(collection)
        # Many changes at once (a first load, a process that was away): build graphs once, after merging.
        replay = len(changes) > 1
        for change in changes:
            index = index.apply(change.table, change.vectors, change.deleted, change.seq, graph=not replay)
        return index.merge_small() if replay else index

    def _maybe_compact(self, collection: str, index: MemoryIndex) -> None:
        """Snapshot a build whose log grew past COMPACT_AFTER_ROWS, in the background, so the next process
        (or this one, after a restart) loads it quickly."""
        if not self.snapshot_in_background or collection in self._compacting:
            return
        base = self.log.latest_base(collection)
        overlay = sum(len(segment) for segment in index.segments[1:]) if base else index.rows
        if index.seq <= (base[0] if base else 0) or overlay < COMPACT_AFTER_ROWS:
            return
        self._compacting.add(collection)

        def compact() -> None:
            try:
                self.log.save_base(collection, index)
            except OSError as error:
                log.warning("could not snapshot %s: %s", collection, error)
            finally:
                self._compacting.discard(collection)

        threading.Thread(target=compact, name=f"snapshot-{collection}", daemon=True).start()

