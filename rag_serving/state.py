"""What a serving process holds: the embedder, the optional reranker, a Milvus connection, the view of the
published index, the serving database, the cache and the rate limiters. Built once per app in the lifespan;
the slow part (resolving the index, loading and warming the embedder, the reranker and the answerer) runs in
the background, and `readiness()` says what it still waits for."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

import sqlalchemy as sa

from rag_core.build_record import BuildRecord
from rag_core.cache import Cache, make_cache
from rag_core.catalog import Catalog
from rag_core.conversations import ConversationStore
from rag_core.embedding import Embedder
from rag_core.generation import warm_up
from rag_core.models import BUNDLED_MODEL, ModelResolver, load_embedder
from rag_core.promotion import ServedReranker, served_fusion, served_reranker, spec_of
from rag_core.querylog import ServingDatabase
from rag_core.ratelimit import FailedAttempts, RateLimiter
from rag_core.rerank import Reranker
from rag_core.retrieval import FusionConfig
from rag_core.search.engines import IndexConnection, IndexNotReady, MemoryEngine, MilvusEngine, Searcher
from rag_core.settings import Settings
from rag_core.store import MilvusUnavailable
from rag_core.tracing import AnswerTracer
from rag_serving.batching import QueryBatcher
from rag_serving.experiments import ExperimentRouting
from rag_serving.metrics import Metrics
from rag_serving.runs import IndexingRuns

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
    fusion: FusionConfig = field(default_factory=FusionConfig)  # rag_core.promotion.served_fusion
    reranker: Reranker | None = field(default=None, compare=False)  # rag_core.promotion.served_reranker
    # {tenant: chunk ids} disabled in the catalog: re-read with the alias, so a toggle is served within a poll.
    disabled: Mapping[str, frozenset[str]] = field(default_factory=dict)


class IndexView:
    """Follows the alias through the search engine: a background thread re-resolves it every `poll_s`, so
    an alias move or a reindex is served without a restart, and requests never wait for a reload.

    It also probes Milvus each time (`probe_milvus` raises MilvusUnavailable): `milvus_error` is why Milvus
    did not answer the last look, "" while it answers. The memory engine serves without Milvus, so only
    the Milvus engine's snapshot goes away with it; writes and new builds wait for it either way."""

    def __init__(
        self,
        engine: MemoryEngine | MilvusEngine,
        embedder_for: Callable[[dict[str, str]], Embedder],
        poll_s: float,
        metrics: Metrics,
        probe_milvus: Callable[[], None],
        fusion_for: Callable[[BuildRecord], FusionConfig] = lambda _record: FusionConfig(),
        disabled_chunks: Callable[[], dict[str, frozenset[str]]] = dict,
        reranker_for: Callable[[BuildRecord], Reranker | None] = lambda _record: None,
    ) -> None:
        self.engine = engine
        self.reranker_for = reranker_for
        self.disabled_chunks = disabled_chunks
        self.embedder_for = embedder_for
        self.fusion_for = fusion_for
        self.poll_s = poll_s
        self.metrics = metrics
        self.probe_milvus = probe_milvus
        self.milvus_error = ""
        self._lock = threading.Lock()
        self._snapshot: IndexSnapshot | None = None
        self._error = "warming up: resolving the served index and loading its embedding model"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def refresh(self) -> None:
        self._probe()
        try:
            served = self.engine.served()
            record = BuildRecord.from_properties(served.properties)
            built_with = record.embedding_version
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
                served.collection, served.version, built_with, served.rows, embedder, served.searcher,
                self.fusion_for(record), self.reranker_for(record), self._disabled(),
            )
        except (IndexNotReady, FileNotFoundError) as error:
            snapshot, self._error = None, str(error)
        except MilvusUnavailable as error:  # logged once per outage by _probe
            snapshot, self._error = None, str(error)
        except Exception as error:  # Milvus failing
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

    def _disabled(self) -> dict[str, frozenset[str]]:
        """The catalog's disabled chunks; while the catalog does not answer, the ones read last."""
        try:
            return self.disabled_chunks()
        except sa.exc.SQLAlchemyError as error:
            log.warning("the disabled chunks could not be read from the catalog (%s); keeping the last ones", error)
            current = self._snapshot
            return dict(current.disabled) if current else {}

    def refresh_disabled(self) -> None:
        """Re-read the disabled chunks now (after a toggle in this process) rather than at the next poll."""
        disabled = self._disabled()
        with self._lock:
            if self._snapshot is not None:
                self._snapshot = replace(self._snapshot, disabled=disabled)

    def _probe(self) -> None:
        try:
            self.probe_milvus()
            error = ""
        except MilvusUnavailable as unavailable:
            error = str(unavailable)
        if error and not self.milvus_error:
            meanwhile = "searches answer from memory" if self.engine.name == "memory" else "requests get 503"
            log.warning("%s; %s until it is back", error, meanwhile)
        elif self.milvus_error and not error:
            log.info("Milvus answers again")
        self.milvus_error = error

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
        self.fusion = settings.fusion()  # the deployment's query config, built once
        # Fusion set in the environment wins over one the gate adopted for the served build (served_fusion).
        self.fusion_configured = settings.fusion_configured
        self.llm = settings.llm()
        self.metrics = Metrics()
        self.resolver = ModelResolver.from_settings(settings)
        # A reranker named in RAG_RERANK_MODEL is resolved before anything opens: a wrong one stops the start with
        # the fix, it never serves unreranked results in silence. Loading the weights waits for the warm-up.
        # With `auto` (the default) each build brings its own, the one the reranker gate recorded on it.
        self.rerank_policy = settings.rerank_policy
        self.reranker = (
            Reranker.from_reference(
                self.rerank_policy.named, self.resolver, settings.embedding_device, settings.rerank_weight
            )
            if self.rerank_policy.named
            else None
        )
        self._recorded_rerankers: dict[ServedReranker, Reranker] = {}
        self.reranker_warm = threading.Event()
        self.reranker_error = ""
        # RAG_EMBEDDING_MODEL pins the model; unset, the server follows the model of the served build.
        self.pinned_model = settings.embedding_model
        self.db = ServingDatabase(
            settings.resolved_serving_db_url, auth_cache_ttl_s=settings.auth_cache_ttl_s, redact_pii=settings.redact_pii
        )
        self.catalog = Catalog(settings.resolved_catalog_url)
        self.conversations = ConversationStore(self.db.engine, settings.redact_pii)
        self.runs = IndexingRuns(settings.resolved_dagster_home, settings.dagster_ui_url)
        self.cache: Cache = make_cache(settings.redis_url)
        self.query_encoder = QueryBatcher()
        self.limiter = RateLimiter(settings.rate_limit_per_minute, settings.redis_url)
        self.failed_auth = FailedAttempts(RateLimiter(settings.auth_failures_per_minute, settings.redis_url))
        self._stack = contextlib.ExitStack()
        self.connection = IndexConnection.from_settings(settings)
        try:
            # The memory engine (Milvus Lite) holds no connection: indexing runs keep writing meanwhile.
            self.engine = self.connection.open_engine(self._stack)
        except MilvusUnavailable:
            self._stack.close()
            raise
        log.info("search engine: %s (RAG_SEARCH_ENGINE=%s)", self.engine.name, settings.search_engine)
        self.index = IndexView(
            self.engine, self.embedder_for, settings.alias_poll_s, self.metrics, self.connection.probe,
            lambda record: served_fusion(record, self.fusion, self.fusion_configured),
            self.catalog.disabled_chunks,
            self.reranker_for,
        )
        self.experiments = ExperimentRouting(self)  # the running A/B experiment, if any (rag_core.experiments)
        self.answerer_warm = threading.Event()
        # RAG_TRACING: answers become MLflow traces once mlflow is imported, off the request path.
        self.tracer = AnswerTracer.from_settings(settings) if settings.tracing else None
        if self.tracer is not None:
            self.tracer.start()
        self.cache_healthy = True  # refreshed in the background: a readiness probe never waits on Redis
        self._stop = threading.Event()
        self._background = threading.Thread(target=self._warm_up_then_watch, name="warm-up", daemon=True)
        self._background.start()

    def _warm_up_then_watch(self) -> None:
        """Resolve the served index (loading and warming its embedder) and follow the alias; warm the
        answerer; then check the cache's health every `alias_poll_s` until `close()`."""
        self.index.refresh()
        self.index.follow()
        self._warm_up_reranker()
        try:
            answer = warm_up(self.llm)
            if answer is not None and answer.degraded:
                log.warning("the answerer %s failed its warm-up: %s", self.settings.llm_model, answer.reason)
        except Exception as error:  # answers degrade to the sources; serving must not depend on the warm-up
            log.warning("warming up the answerer %s failed: %s", self.settings.llm_model, error)
        self.answerer_warm.set()
        while True:
            self.cache_healthy = self.cache.healthy()
            if self._stop.wait(self.settings.alias_poll_s):
                return

    def _warm_up_reranker(self) -> None:
        if self.reranker is not None:
            try:
                self.reranker.warm_up()
            except Exception as error:  # unreadable weights: never ready, and /ready says why
                self.reranker_error = (
                    f"the reranker {self.settings.rerank_model} did not load ({type(error).__name__}: {error}) — "
                    "point RAG_RERANK_MODEL at a model the `reranker_model` asset registered, or unset it"
                )
                log.error("%s", self.reranker_error)
                return
            log.info("reranker %s (%s) warm", self.settings.rerank_model, self.reranker.version)
        self.reranker_warm.set()

    def readiness(self) -> tuple[IndexSnapshot | None, str]:
        """(the served snapshot, "") when ready, else (None, what it waits for), from what the background
        threads saw last: no I/O, for probes."""
        try:
            snapshot = self.index.current()
        except IndexNotReady as error:
            return None, str(error)
        if self.reranker_error:
            return None, self.reranker_error
        if not self.reranker_warm.is_set():
            return None, f"warming up the reranker ({self.settings.rerank_model})"
        if not self.answerer_warm.is_set():
            return None, f"warming up the answerer ({self.settings.llm_model})"
        return snapshot, ""

    def reranker_for(self, record: BuildRecord) -> Reranker | None:
        """The reranker a build is served with (rag_core.promotion.served_reranker), loaded and warmed once per
        (model, weight): a build whose recorded reranker does not load is not served, and /ready says why."""
        if self.rerank_policy.named:  # every build, resolved at start-up
            return self.reranker
        settings = self.settings
        weight, explicit = settings.rerank_weight, settings.rerank_weight_configured
        choice = served_reranker(record, self.rerank_policy, weight, explicit)
        if choice is None:
            return None
        if choice not in self._recorded_rerankers:
            device, modes = settings.embedding_device, choice.mode_weights()
            try:
                reranker = Reranker.from_reference(choice.reference, self.resolver, device, choice.weight, modes)
                self._recorded_rerankers[choice] = reranker.warm_up()
            except Exception as error:
                raise IndexNotReady(
                    f"the reranker {choice.reference} that the reranker gate recorded on the served build did not "
                    f"load ({type(error).__name__}: {error}) — check the MLflow registry, or set RAG_RERANK_MODEL=off "
                    "to serve without reranking"
                ) from error
            log.info("the served build's reranker %s (%s) is warm: %s", choice.reference, reranker.version, modes)
        return self._recorded_rerankers[choice]

    def embedder_for(self, properties: dict[str, str]) -> Embedder:
        spec = spec_of(properties, BUNDLED_MODEL)  # queries embed with the served build's backend
        embedder = load_embedder(
            self.pinned_model or spec.model,
            self.resolver,
            self.settings.embedding_device,
            self.settings.embedding_batch_size,
            spec.backend,
        ).load()
        embedder.encode(["warm-up"])  # loaded and run once now: the first request should not pay for either
        return embedder

    def close(self) -> None:
        self._stop.set()
        self._background.join(timeout=30)
        self.index.stop()
        self.db.close()  # writes every queued query-log row
        if self.tracer is not None:
            self.tracer.flush()  # writes every recorded trace
        self.runs.close()
        self._stack.close()
