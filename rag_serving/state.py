"""What a serving process holds: the embedder, a Milvus connection, the view of the published index,
the serving database, the cache and the rate limiter. Built once per app in the lifespan."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from rag_core.cache import Cache, make_cache
from rag_core.catalog import Catalog
from rag_core.embedding import Embedder
from rag_core.models import BUNDLED_MODEL, ModelResolver, load_embedder
from rag_core.promotion import spec_of
from rag_core.querylog import ServingDatabase
from rag_core.ratelimit import RateLimiter
from rag_core.search.engines import IndexConnection, IndexNotReady, MemoryEngine, MilvusEngine, Searcher
from rag_core.settings import Settings
from rag_core.store import MilvusUnavailable
from rag_serving.batching import QueryBatcher
from rag_serving.metrics import Metrics

log = logging.getLogger("rag_serving")


@dataclass(frozen=True)
class IndexSnapshot:
    """One resolution of the alias. A request uses one snapshot throughout: never mixed results, and
    queries are embedded with the very model the served build was made with."""

    collection: str
    index_version: str
    embedding_version: str
    rows: int
    embedder: Embedder = field(compare=False, repr=False)
    searcher: Searcher = field(compare=False, repr=False)


class IndexView:
    """Follows the alias through the search engine: a background thread re-resolves it every `poll_s`, so
    an alias move or a reindex is served without a restart, and requests never wait for a reload."""

    def __init__(
        self,
        engine: MemoryEngine | MilvusEngine,
        embedder_for: Callable[[dict[str, str]], Embedder],
        poll_s: float,
        metrics: Metrics,
    ) -> None:
        self.engine = engine
        self.embedder_for = embedder_for
        self.poll_s = poll_s
        self.metrics = metrics
        self._lock = threading.Lock()
        self._snapshot: IndexSnapshot | None = None
        self._error = "not resolved yet"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def refresh(self) -> None:
        try:
            served = self.engine.served()
            built_with = served.properties.get("rag.embedding_version", "")
            current = self._snapshot
            # Resolve the model only when the served build changed model: polling stays cheap.
            unchanged = current is not None and current.embedding_version == built_with
            embedder = current.embedder if unchanged else self.embedder_for(served.properties)
            if built_with != embedder.version:
                raise IndexNotReady(
                    f"{served.collection} was built with {built_with or 'an unknown model'} but this server embeds "
                    f"with {embedder.version} — unset RAG_EMBEDDING_MODEL to follow the index's model, or set "
                    "it to that model"
                )
            snapshot = IndexSnapshot(
                served.collection, served.version, built_with, served.rows, embedder, served.searcher
            )
        except (IndexNotReady, FileNotFoundError) as error:
            snapshot, self._error = None, str(error)
        except Exception as error:  # Milvus unreachable or failing
            log.warning("the served index could not be read: %s", error, exc_info=log.isEnabledFor(logging.DEBUG))
            snapshot, self._error = None, f"Milvus is not answering ({type(error).__name__}: {error})"
        with self._lock:
            if snapshot and snapshot != self._snapshot:
                self.metrics.index.clear()
                self.metrics.index.labels(snapshot.collection, snapshot.index_version).set(1)
                self.metrics.index_rows.set(snapshot.rows)
                if self._snapshot and snapshot.collection != self._snapshot.collection:
                    log.info("alias moved to %s", snapshot.collection)
            self._snapshot = snapshot

    def current(self) -> IndexSnapshot:
        snapshot = self._snapshot
        if snapshot is None:
            raise IndexNotReady(self._error)
        return snapshot

    def follow(self) -> None:
        """Re-resolve in the background until `stop()`."""

        def loop() -> None:
            while not self._stop.wait(self.poll_s):
                self.refresh()

        self._thread = threading.Thread(target=loop, name="index-follower", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)


class ServingState:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.resolver = ModelResolver.from_settings(settings)
        # RAG_EMBEDDING_MODEL pins the model; unset, the server follows the model of the served build.
        self.pinned_model = settings.embedding_model
        self.db = ServingDatabase(settings.resolved_serving_db_url, auth_cache_ttl_s=settings.auth_cache_ttl_s)
        self.catalog = Catalog(settings.resolved_catalog_url)
        self.cache: Cache = make_cache(settings.redis_url)
        self.query_encoder = QueryBatcher()
        self.limiter = RateLimiter(settings.rate_limit_per_minute, settings.redis_url)
        self._stack = contextlib.ExitStack()
        self.connection = IndexConnection.from_settings(settings)
        try:
            # The memory engine (Milvus Lite) holds no connection: indexing runs keep writing meanwhile.
            self.engine = self.connection.open_engine(self._stack)
        except MilvusUnavailable:
            self._stack.close()
            raise
        log.info("search engine: %s (RAG_SEARCH_ENGINE=%s)", self.engine.name, settings.search_engine)
        self.index = IndexView(self.engine, self.embedder_for, settings.alias_poll_s, self.metrics)
        self.index.refresh()
        self.index.follow()

    def embedder_for(self, properties: dict[str, str]) -> Embedder:
        spec = spec_of(properties, BUNDLED_MODEL)  # queries embed with the served build's backend
        embedder = load_embedder(
            self.pinned_model or spec.model,
            self.resolver,
            self.settings.embedding_device,
            self.settings.embedding_batch_size,
            spec.backend,
        )
        return embedder.load()  # load now: the first request should not pay for it

    def close(self) -> None:
        self.index.stop()
        self.db.close()  # writes every queued query-log row
        self._stack.close()
