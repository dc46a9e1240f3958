"""What a serving process holds: the embedder, a Milvus connection, the view of the published index,
the serving database, the cache and the rate limiter. Built once per app in the lifespan."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from rag_core.cache import Cache, make_cache
from rag_core.catalog import Catalog
from rag_core.embedding import Embedder
from rag_core.models import BUNDLED_MODEL, ModelResolver, load_embedder
from rag_core.promotion import spec_of
from rag_core.querylog import ServingDatabase
from rag_core.ratelimit import RateLimiter
from rag_core.settings import Settings
from rag_core.store import MilvusStore, MilvusUnavailable, milvus_client
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


class IndexNotReady(RuntimeError):
    """The alias is missing, Milvus is down, or the collection was built with another model."""


class IndexView:
    """Follows the alias: re-reads it at most every `poll_s`, so an alias move is served without restart."""

    def __init__(
        self, store: MilvusStore, embedder_for: Callable[[dict[str, str]], Embedder], poll_s: float, metrics: Metrics
    ) -> None:
        self.store = store
        self.embedder_for = embedder_for
        self.poll_s = poll_s
        self.metrics = metrics
        self._lock = threading.Lock()
        self._snapshot: IndexSnapshot | None = None
        self._error = "not resolved yet"
        self._checked = 0.0

    def refresh(self) -> None:
        try:
            collection = self.store.alias_target()
            if collection is None:
                raise IndexNotReady(f"alias {self.store.alias!r} does not exist — build the index first (`rag index`)")
            properties = self.store.collection_properties(collection)
            built_with = properties.get("rag.embedding_version", "")
            current = self._snapshot
            # Resolve the model only when the served build changed model: polling stays two property reads.
            unchanged = current is not None and current.embedding_version == built_with
            embedder = current.embedder if unchanged else self.embedder_for(properties)
            if built_with != embedder.version:
                raise IndexNotReady(
                    f"{collection} was built with {built_with or 'an unknown model'} but this server embeds "
                    f"with {embedder.version} — unset RAG_EMBEDDING_MODEL to follow the index's model, or set "
                    "it to that model"
                )
            snapshot = IndexSnapshot(
                collection, properties.get("rag.index_version", "0"), built_with, self.store.count(collection), embedder
            )
        except (IndexNotReady, FileNotFoundError) as error:
            snapshot, self._error = None, str(error)
        except Exception as error:  # Milvus unreachable or failing
            snapshot, self._error = None, f"Milvus is not answering ({type(error).__name__}: {error})"
        with self._lock:
            if snapshot and snapshot != self._snapshot:
                self.metrics.index.clear()
                self.metrics.index.labels(snapshot.collection, snapshot.index_version).set(1)
                self.metrics.index_rows.set(snapshot.rows)
                if self._snapshot and snapshot.collection != self._snapshot.collection:
                    log.info("alias %s moved to %s", self.store.alias, snapshot.collection)
            self._snapshot = snapshot
            self._checked = time.monotonic()

    def current(self) -> IndexSnapshot:
        if time.monotonic() - self._checked > self.poll_s:
            self.refresh()
        snapshot = self._snapshot
        if snapshot is None:
            raise IndexNotReady(self._error)
        return snapshot

    @property
    def error(self) -> str:
        return self._error


class ServingState:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.resolver = ModelResolver.from_settings(settings)
        # RAG_EMBEDDING_MODEL pins the model; unset, the server follows the model of the served build.
        self.pinned_model = settings.embedding_model
        self.db = ServingDatabase(settings.resolved_serving_db_url)
        self.catalog = Catalog(settings.resolved_catalog_url)
        self.cache: Cache = make_cache(settings.redis_url)
        self.limiter = RateLimiter(settings.rate_limit_per_minute, settings.redis_url)
        self._stack = contextlib.ExitStack()
        try:
            client = self._stack.enter_context(
                milvus_client(settings.resolved_milvus_uri, settings.milvus_token, settings.milvus_lock_timeout_s)
            )
        except MilvusUnavailable:
            self._stack.close()
            raise
        self.store = MilvusStore(client, settings.collection_alias)
        self.index = IndexView(self.store, self.embedder_for, settings.alias_poll_s, self.metrics)
        self.index.refresh()

    def embedder_for(self, properties: dict[str, str]) -> Embedder:
        reference = self.pinned_model or spec_of(properties, BUNDLED_MODEL).model
        embedder = load_embedder(
            reference, self.resolver, self.settings.embedding_device, self.settings.embedding_batch_size
        )
        embedder.model  # load now: the first request should not pay for it  # noqa: B018
        return embedder

    def close(self) -> None:
        self._stack.close()
