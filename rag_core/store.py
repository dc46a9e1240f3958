"""The Milvus store: one thin layer of pymilvus calls that work the same against Milvus Lite (a local
`.db` file) and a Milvus server or cluster (`MILVUS_URI=http://host:19530`).

A collection holds one index build (one embedding model + chunking); the serving alias points at the
published one. Milvus Lite lets one process at a time open its file, so sessions here are short-lived:
open, work, release — and another process waiting for the file retries until `lock_timeout_s`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol, TypeVar

import grpc
from pymilvus import DataType, Function, FunctionType, MilvusClient
from pymilvus.client.types import Status
from pymilvus.exceptions import ConnectionConfigException, MilvusException

from rag_core.build_record import BuildRecord
from rag_core.build_record import changes as record_changes
from rag_core.chunking import TEXT_MAX_BYTES, search_text
from rag_core.documents import DOC_ID_MAX_BYTES, SOURCE_MAX_BYTES, TENANT_MAX_BYTES
from rag_core.errors import Refusal
from rag_core.search.analyzer import BM25_B, BM25_K1, STANDARD
from rag_core.search.filters import ROW_CLAUSES
from rag_core.search.published import is_lite_uri

log = logging.getLogger(__name__)


class _DropLiteIteratorNotice(logging.Filter):
    """Milvus Lite has no server-side MVCC timestamp (AllocTimestamp); the query iterator falls back to a
    client-side one, but both pymilvus and Lite's in-process gRPC server log it on every call."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return "failed to get mvccTs" not in message and "Method not implemented" not in message


for _noisy in ("pymilvus.client.iterator.query_iterator", "grpc._server"):
    logging.getLogger(_noisy).addFilter(_DropLiteIteratorNotice())

SCHEMA_VERSION = "1"
BATCH = 500
OUTPUT_FIELDS = [
    "chunk_id",
    "doc_id",
    "source_key",
    "tenant",
    "source",
    "title",
    "text",
    "position",
    "start_char",
    "end_char",
]


class MilvusUnavailable(Refusal):
    """Milvus cannot be reached or opened; the message names the fix."""


T = TypeVar("T")
# gRPC waits up to 2 minutes (exponential back-off) before it tries a lost server again, so a Milvus that
# restarted would stay unanswered long after it is back: try again every second at most.
GRPC_OPTIONS = {
    "grpc.initial_reconnect_backoff_ms": 200,
    "grpc.min_reconnect_backoff_ms": 200,
    "grpc.max_reconnect_backoff_ms": 1000,
}
_UNREACHABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED)
COLLECTION_NOT_LOADED = 101  # Milvus' ErrCollectionNotLoaded


def unreachable(error: BaseException) -> bool:
    """Milvus is down, restarting or cut off (rather than refusing this one call)."""
    if isinstance(error, grpc.FutureTimeoutError):
        return True
    if isinstance(error, grpc.RpcError):
        return error.code() in _UNREACHABLE
    if isinstance(error, MilvusException):
        if error.code == Status.CONNECT_FAILED or error.code in _UNREACHABLE:
            return True
        return error.__cause__ is not None and error.__cause__ is not error and unreachable(error.__cause__)
    return False


def _reason(error: BaseException) -> str:
    return error.message if isinstance(error, MilvusException) else type(error).__name__


def not_loaded(error: MilvusException) -> bool:
    """Milvus refused a search or query on a released collection (a restarted Milvus releases them all)."""
    message = str(error.message).lower()
    return error.code == COLLECTION_NOT_LOADED or "not loaded" in message or "call load()" in message


def milvus_name(text: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_]+", "_", text).strip("_").lower()
    return name if name and not name[0].isdigit() else f"c_{name}"


def in_filter(field: str, values: Iterable[str]) -> str:
    return f"{field} in {json.dumps(list(values))}"


# --------------------------------------------------------------------------- connections

_lite_lock = threading.Lock()
LITE_OPEN_ATTEMPTS = 3  # opens of a Milvus Lite file that no process holds before its error is the answer
_lite_users: Counter[str] = Counter()


def _lite_file_busy(db_path: Path) -> bool:
    lock_file = db_path / "LOCK"
    if not lock_file.exists():
        return False
    with lock_file.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
    return False


class Countdown:
    """Says what a wait is for and how long it has left, at most every `every_s` seconds (or at each `force`),
    so a user watching a command knows it is waiting, not hanging."""

    def __init__(self, what: str, deadline: float, every_s: float = 5.0) -> None:
        self.what = what
        self.deadline = deadline
        self.every_s = every_s
        self._said_at = float("-inf")

    def tick(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._said_at >= self.every_s:
            self._said_at = now
            log.warning("%s — %.0f s left", self.what, max(0.0, self.deadline - now))


def _open_lite(uri: str, timeout_s: float) -> MilvusClient:
    db_path = Path(uri).resolve()
    db_path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout_s
    countdown = Countdown(f"waiting for the Milvus Lite file {db_path} (another process holds it)", deadline)
    failed_while_free = 0
    while True:
        with _lite_lock:
            if _lite_users[str(db_path)] or not _lite_file_busy(db_path):
                try:
                    client = MilvusClient(str(db_path))
                except ConnectionConfigException:
                    # Another process took the file between the probe and the open (and may have let it go again
                    # by the next probe): wait for it as for a busy one. Failing again and again on a free file is
                    # not a race.
                    failed_while_free = 0 if _lite_file_busy(db_path) else failed_while_free + 1
                    if failed_while_free >= LITE_OPEN_ATTEMPTS:
                        raise
                else:
                    _lite_users[str(db_path)] += 1
                    return client
        countdown.tick()
        if time.monotonic() > deadline:
            raise MilvusUnavailable(
                f"the Milvus Lite file {db_path} stayed locked by another process for {timeout_s:.0f} s — "
                "stop that process, or share one endpoint between processes: run "
                f"`milvus-lite server --data-dir {db_path}` and set MILVUS_URI=http://127.0.0.1:19530"
            )
        time.sleep(0.25)


def _release_lite(uri: str) -> None:
    from milvus_lite.server_manager import server_manager_instance

    db_path = str(Path(uri).resolve())
    with _lite_lock:
        _lite_users[db_path] -= 1
        if _lite_users[db_path] <= 0:
            del _lite_users[db_path]
            server_manager_instance.release_server(db_path)


@contextlib.contextmanager
def milvus_client(uri: str, token: str = "", lock_timeout_s: float = 120.0) -> Iterator[MilvusClient]:
    """A client for the duration of a block; a Milvus Lite file is released for other processes after."""
    if is_lite_uri(uri):
        client = _open_lite(uri, lock_timeout_s)
        try:
            yield client
        finally:
            client.close()
            _release_lite(uri)
        return
    deadline = time.monotonic() + lock_timeout_s
    countdown = Countdown(f"waiting for Milvus at {uri}", deadline)
    while True:  # a busy or restarting server gets the same patience as a locked Lite file
        # One attempt never outlasts the patience left (RAG_MILVUS_LOCK_TIMEOUT_S), so the countdown holds.
        attempt_s = max(1.0, min(10.0, deadline - time.monotonic()))
        try:
            client = MilvusClient(uri=uri, token=token or None, timeout=attempt_s, grpc_options=GRPC_OPTIONS)
            break
        except MilvusException as error:
            if time.monotonic() > deadline:
                raise MilvusUnavailable(
                    f"Milvus at {uri} is not reachable ({_reason(error)}) after {lock_timeout_s:.0f} s — start it, "
                    "fix MILVUS_URI, or unset MILVUS_URI to use the embedded Milvus Lite file"
                ) from error
            countdown.tick(force=True)
            time.sleep(min(2.0, max(0.0, deadline - time.monotonic())))
    try:
        yield client
    finally:
        client.close()


def probe(uri: str, token: str = "", timeout_s: float = 2.0) -> None:
    """Raise MilvusUnavailable unless the Milvus server at `uri` answers now: one attempt, no patience."""
    try:
        client = MilvusClient(uri=uri, token=token or None, timeout=timeout_s, grpc_options=GRPC_OPTIONS)
        try:
            client.get_server_version(timeout=timeout_s)
        finally:
            client.close()
    except (MilvusException, grpc.RpcError, grpc.FutureTimeoutError) as error:
        raise MilvusUnavailable(
            f"Milvus at {uri} is not answering ({_reason(error)}) — start it, or fix MILVUS_URI"
        ) from error


# --------------------------------------------------------------------------- the store


@dataclass(frozen=True)
class IndexBuild:
    """What a collection was built with; stored as collection properties."""

    embedding_model: str
    embedding_version: str
    dimension: int
    chunking: str
    model_reference: str = ""  # how any process loads the model again (rag_core.models)
    chunk_max_tokens: int = 0
    chunk_overlap_tokens: int = 0
    document_entries: bool = False
    bm25_analyzer: str = STANDARD  # what the rows' BM25 field holds (rag_core.search.analyzer)

    def record(self) -> BuildRecord:
        return BuildRecord(
            embedding_model=self.embedding_model,
            embedding_version=self.embedding_version,
            model_reference=self.model_reference,
            dimension=self.dimension,
            chunking=self.chunking,
            chunk_max_tokens=self.chunk_max_tokens,
            chunk_overlap_tokens=self.chunk_overlap_tokens,
            document_entries=self.document_entries,
            bm25_analyzer=self.bm25_analyzer,
            schema_version=SCHEMA_VERSION,
        )

    def properties(self) -> dict[str, str]:
        return self.record().to_properties()

    @property
    def collection_name(self) -> str:
        return collection_name(self.embedding_model, self.embedding_version, self.chunking)


def collection_name(model: str, embedding_version: str, chunking: str) -> str:
    """The collection of a build: its model, weights hash, backend, chunking and schema version."""
    weights, _, backend = embedding_version.split("@")[-1].partition("+")  # hash[+onnx|+onnx-int8]
    version = f"{weights[:10]}_{backend}" if backend else weights[:10]
    return milvus_name(f"{model}_{version}_{chunking}_s{SCHEMA_VERSION}")


@dataclass(frozen=True)
class Hit:
    chunk_id: str
    score: float
    fields: Mapping[str, Any]


class ChangeLog(Protocol):
    """Where the store reports each write after Milvus took it (rag_core.search.log.SearchLog)."""

    def created(self, name: str, properties: dict[str, str]) -> None: ...
    def set_properties(self, name: str, properties: dict[str, str]) -> None: ...
    def upserted(self, name: str, rows: Sequence[dict]) -> None: ...
    def deleted(self, name: str, chunk_ids: Sequence[str]) -> None: ...
    def replaced(self, name: str, rows: Sequence[dict], chunk_ids: Sequence[str]) -> None: ...
    def alias_moved(self, alias: str, collection: str) -> None: ...
    def dropped(self, name: str) -> None: ...


class MilvusStore:
    def __init__(self, client: MilvusClient, alias: str, changes: ChangeLog | None = None) -> None:
        self.client = client
        self.alias = alias
        self.changes = changes
        self._loaded: set[str] = set()
        self._loading = threading.Lock()  # one load per collection, not one per request thread

    def _ready(self, collection: str) -> str:
        """Milvus serves only loaded collections; a reopened Milvus Lite file starts them released."""
        if collection not in self._loaded:
            with self._loading, self._answering():
                if collection not in self._loaded:
                    state = self.client.get_load_state(collection).get("state")
                    if getattr(state, "name", str(state)) != "Loaded":
                        log.info("loading %s in Milvus", collection)
                        self.client.load_collection(collection)
                    self._loaded.add(collection)
        return collection

    @contextlib.contextmanager
    def _answering(self) -> Iterator[None]:
        """Milvus not answering becomes MilvusUnavailable, and the store forgets which collections it
        loaded: what answers next may be a restarted Milvus, which has released them all. (pymilvus opens
        a new channel itself after such an error; GRPC_OPTIONS keep its retries a second apart.)"""
        try:
            yield
        except (MilvusException, grpc.RpcError, grpc.FutureTimeoutError) as error:
            if not unreachable(error):
                raise
            self._loaded.clear()
            raise MilvusUnavailable(
                f"Milvus is not answering ({_reason(error)}) — retry shortly; if it lasts, check that the Milvus "
                "server behind MILVUS_URI is running"
            ) from error

    def _on_loaded(self, call: Callable[..., T], collection: str, *args: Any, **kwargs: Any) -> T:
        """`call(collection, …)` once the collection is loaded. A collection Milvus released behind this
        store's back (it restarted) is loaded again and the call retried, once."""
        try:
            with self._answering():
                return call(self._ready(collection), *args, **kwargs)
        except MilvusException as error:
            if not not_loaded(error):
                raise
            log.warning("Milvus released %s (a restart?); loading it again", collection)
            self._loaded.discard(collection)
        with self._answering():
            return call(self._ready(collection), *args, **kwargs)

    def collection_for(self, build: IndexBuild) -> str:
        return f"{self.alias}__{build.collection_name}"

    def collection_named(self, embedding_version: str, chunking: str) -> str:
        """This alias' collection for a build of `embedding_version` (`model@hash[+backend]`) with `chunking`."""
        return f"{self.alias}__{collection_name(embedding_version.split('@')[0], embedding_version, chunking)}"

    # ---- schema
    def ensure_collection(self, build: IndexBuild, name: str | None = None) -> str:
        name = name or self.collection_for(build)
        if self.client.has_collection(name):
            stored = self.record(name).embedding_version
            if stored != build.embedding_version:
                raise RuntimeError(
                    f"collection {name} was built with {stored}, not "
                    f"{build.embedding_version} — drop it or change RAG_COLLECTION_ALIAS"
                )
            return name
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        # The limits parsing and chunking enforce (rag_core.documents, rag_core.chunking): a row never exceeds them.
        schema.add_field("chunk_id", DataType.VARCHAR, is_primary=True, max_length=256)
        schema.add_field("doc_id", DataType.VARCHAR, max_length=DOC_ID_MAX_BYTES)
        schema.add_field("source_key", DataType.VARCHAR, max_length=256)
        schema.add_field("tenant", DataType.VARCHAR, max_length=TENANT_MAX_BYTES, is_partition_key=True)
        schema.add_field("source", DataType.VARCHAR, max_length=SOURCE_MAX_BYTES)
        schema.add_field("title", DataType.VARCHAR, max_length=4096)
        schema.add_field("text", DataType.VARCHAR, max_length=TEXT_MAX_BYTES)
        schema.add_field("search_text", DataType.VARCHAR, max_length=TEXT_MAX_BYTES, enable_analyzer=True)
        schema.add_field("position", DataType.INT64)
        schema.add_field("start_char", DataType.INT64)
        schema.add_field("end_char", DataType.INT64)
        schema.add_field("dense", DataType.FLOAT_VECTOR, dim=build.dimension)
        schema.add_field("sparse", DataType.SPARSE_FLOAT_VECTOR)
        schema.add_field("metadata", DataType.JSON)
        schema.add_function(
            Function(
                name="search_text_bm25",
                function_type=FunctionType.BM25,
                input_field_names=["search_text"],
                output_field_names=["sparse"],
            )
        )
        index_params = self.client.prepare_index_params()
        index_params.add_index(
            "dense", index_type="HNSW", metric_type="COSINE", params={"M": 16, "efConstruction": 200}
        )
        index_params.add_index(
            "sparse",
            index_type="SPARSE_INVERTED_INDEX",
            metric_type="BM25",
            params={"bm25_k1": BM25_K1, "bm25_b": BM25_B},  # every engine scores with the same constants
        )
        created = replace(build.record(), created_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        properties = created.to_properties()
        self.client.create_collection(name, schema=schema, index_params=index_params, properties=properties)
        if self.changes:
            self.changes.created(name, properties)
        log.info("created collection %s", name)
        return name

    def collection_properties(self, name: str) -> dict[str, str]:
        with self._answering():
            return dict(self.client.describe_collection(name).get("properties", {}))

    def record(self, name: str) -> BuildRecord:
        """What the collection records about itself (rag_core.build_record)."""
        return BuildRecord.from_properties(self.collection_properties(name))

    def update_record(self, name: str, **fields: object) -> None:
        """Set (None clears) these fields of the collection's record."""
        self.set_properties(name, record_changes(**fields))

    def bump_index_version(self, name: str) -> str:
        version = f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:8]}"
        self.update_record(name, index_version=version)
        return version

    def set_properties(self, name: str, properties: dict[str, str]) -> None:
        properties = {key: str(value) for key, value in properties.items()}
        self.client.alter_collection_properties(name, properties)
        if self.changes:
            self.changes.set_properties(name, properties)

    def has_collection(self, name: str) -> bool:
        with self._answering():
            return self.client.has_collection(name)

    def drop_collection(self, name: str) -> None:
        if self.alias_target() == name:
            raise RuntimeError(f"{name} is served by the alias {self.alias}; move the alias before dropping it")
        self._loaded.discard(name)
        self.client.drop_collection(name)
        if self.changes:
            self.changes.dropped(name)

    # ---- alias
    def alias_target(self) -> str | None:
        with self._answering():
            if self.alias not in self.client.list_aliases().get("aliases", []):
                return None
            return self.client.describe_alias(self.alias)["collection_name"]

    def point_alias(self, collection: str) -> None:
        """Atomically direct readers of the alias to `collection`."""
        if self.alias_target() is None:
            self.client.create_alias(collection, self.alias)
        else:
            self.client.alter_alias(collection, self.alias)
        if self.changes:
            self.changes.alias_moved(self.alias, collection)

    # ---- rows
    def chunk_ids_by_source(self, collection: str, source_keys: Sequence[str]) -> dict[str, set[str]]:
        found: dict[str, set[str]] = {key: set() for key in source_keys}
        for start in range(0, len(source_keys), 100):
            batch = source_keys[start : start + 100]
            for row in self._query_all(collection, in_filter("source_key", batch), ["chunk_id", "source_key"]):
                found[row["source_key"]].add(row["chunk_id"])
        return found

    def texts_by_chunk_id(self, collection: str, chunk_ids: Sequence[str]) -> dict[str, str]:
        """The embedded text (title + passage, as written: the BM25 field may hold it stemmed) of these chunks."""
        found: dict[str, str] = {}
        for start in range(0, len(chunk_ids), 100):
            batch = list(chunk_ids[start : start + 100])
            for row in self._query_all(collection, in_filter("chunk_id", batch), ["chunk_id", "title", "text"]):
                found[row["chunk_id"]] = search_text(row["title"], row["text"])
        return found

    def sample_texts(self, collection: str, limit: int) -> dict[str, str]:
        """Up to `limit` chunks' embedded text, spread over the collection (every n-th chunk id; never a
        document entry)."""
        ids = sorted(row["chunk_id"] for row in self._query_all(collection, ROW_CLAUSES["chunks"], ["chunk_id"]))
        step = max(1, len(ids) // max(limit, 1))
        return self.texts_by_chunk_id(collection, ids[::step][:limit])

    def doc_ids(self, collection: str) -> set[str]:
        return {row["doc_id"] for row in self._query_all(collection, "", ["doc_id"])}

    def rows_by_source(self, collection: str) -> Counter[str]:
        """Chunks per source: what the catalog counts (a document entry beside them is not a chunk)."""
        rows = self._query_all(collection, ROW_CLAUSES["chunks"], ["source_key"])
        return Counter(row["source_key"] for row in rows)

    def all_rows(self, collection: str, fields: list[str]) -> Iterator[dict[str, Any]]:
        return self._query_all(collection, "", fields)

    def rows_where(self, collection: str, expression: str, fields: list[str]) -> Iterator[dict[str, Any]]:
        return self._query_all(collection, expression, fields)

    def _query_all(self, collection: str, expression: str, fields: list[str]) -> Iterator[dict[str, Any]]:
        iterator = self._on_loaded(
            self.client.query_iterator, collection, batch_size=1000, filter=expression, output_fields=fields
        )
        try:
            while True:
                with self._answering():
                    batch = iterator.next()
                if not batch:
                    return
                yield from batch
        finally:
            iterator.close()

    def upsert(self, collection: str, rows: Sequence[dict[str, Any]]) -> int:
        self._write_rows(collection, rows)
        if self.changes:
            self.changes.upserted(collection, rows)
        return len(rows)

    def delete_chunks(self, collection: str, chunk_ids: Sequence[str]) -> int:
        self._delete_rows(collection, chunk_ids)
        if self.changes:
            self.changes.deleted(collection, chunk_ids)
        return len(chunk_ids)

    def replace_rows(self, collection: str, rows: Sequence[dict[str, Any]], superseded: Sequence[str]) -> None:
        """Write a document's new rows before deleting its old ones, so a reader finds the old version or
        the new one, never a part of either (the search log records both as one change)."""
        self._write_rows(collection, rows)
        self._delete_rows(collection, superseded)
        if self.changes:
            self.changes.replaced(collection, rows, superseded)

    def _write_rows(self, collection: str, rows: Sequence[dict[str, Any]]) -> None:
        for start in range(0, len(rows), BATCH):
            self._on_loaded(self.client.upsert, collection, list(rows[start : start + BATCH]))

    def _delete_rows(self, collection: str, chunk_ids: Sequence[str]) -> None:
        for start in range(0, len(chunk_ids), BATCH):
            self._on_loaded(self.client.delete, collection, ids=list(chunk_ids[start : start + BATCH]))

    def delete_sources(self, collection: str, source_keys: Sequence[str]) -> int:
        chunk_ids: list[str] = []
        for start in range(0, len(source_keys), 100):
            batch = list(source_keys[start : start + 100])
            rows = self._query_all(collection, in_filter("source_key", batch), ["chunk_id"])
            chunk_ids += [row["chunk_id"] for row in rows]
        return self.delete_chunks(collection, chunk_ids)

    def count(self, collection: str) -> int:
        result = self._on_loaded(self.client.query, collection, filter="", output_fields=["count(*)"])
        return int(result[0]["count(*)"])

    def list_collections(self) -> list[str]:
        return [name for name in self.client.list_collections() if name.startswith(f"{self.alias}__")]

    # ---- search (the serving layer builds hybrid retrieval on these)
    def search_dense(self, collection: str, vector: Sequence[float], limit: int, expression: str = "") -> list[Hit]:
        results = self._on_loaded(
            self.client.search,
            collection,
            data=[list(vector)],
            anns_field="dense",
            limit=limit,
            filter=expression,
            search_params={"metric_type": "COSINE", "params": {"ef": max(64, limit)}},
            output_fields=OUTPUT_FIELDS,
        )
        return [Hit(hit["entity"]["chunk_id"], float(hit["distance"]), dict(hit["entity"])) for hit in results[0]]

    def search_bm25(self, collection: str, query: str, limit: int, expression: str = "") -> list[Hit]:
        results = self._on_loaded(
            self.client.search,
            collection,
            data=[query],
            anns_field="sparse",
            limit=limit,
            filter=expression,
            search_params={"metric_type": "BM25"},
            output_fields=OUTPUT_FIELDS,
        )
        return [Hit(hit["entity"]["chunk_id"], float(hit["distance"]), dict(hit["entity"])) for hit in results[0]]
