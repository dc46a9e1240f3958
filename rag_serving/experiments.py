"""A/B experiments on the request path: which arm a request gets, and what that arm changes.

The running experiment is re-read from the serving database every `alias_poll_s` (an admin route in this
process changes it at once), so a request never waits on the database for it. An arm that serves another
build gets that build's snapshot, embedded with the model the build was made with, resolved like the
served one and kept for a poll interval; the arm's retrieval settings and answerer override the request's."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from rag_core.build_record import BuildRecord
from rag_core.experiments import RETRIEVAL_STAGES, Arm, Experiment, ExperimentStore, arm_of, assign
from rag_core.generation import LLMConfig
from rag_core.promotion import served_fusion
from rag_core.search.engines import IndexNotReady, MemoryEngine

if TYPE_CHECKING:  # the serving state holds the routing: imported for types only
    from rag_serving.schemas import RetrieveRequest
    from rag_serving.state import IndexSnapshot, ServingState

log = logging.getLogger("rag_serving")


@dataclass(frozen=True)
class Assignment:
    experiment: str
    arm: Arm
    llm: LLMConfig  # the answerer this arm answers with


class ExperimentRouting:
    def __init__(self, state: ServingState, clock: Callable[[], float] = time.monotonic) -> None:
        self.state = state
        self.store = ExperimentStore(state.db.engine)
        self.clock = clock
        self._lock = threading.Lock()
        self._running: Experiment | None = None
        self._read_at = float("-inf")
        self._builds: dict[str, tuple[IndexSnapshot, float]] = {}

    def running(self) -> Experiment | None:
        """The running experiment as read at most `alias_poll_s` ago."""
        if self.clock() - self._read_at < self.state.settings.alias_poll_s:
            return self._running
        with self._lock:
            if self.clock() - self._read_at >= self.state.settings.alias_poll_s:
                try:
                    self._adopt(self.store.running())
                except Exception as error:  # the database is away: keep the experiment read last
                    log.warning("the running experiment could not be read (%s); keeping the last one", error)
                self._read_at = self.clock()
        return self._running

    def changed(self) -> None:
        """An admin route changed an experiment: read it again before the next request."""
        with self._lock:
            self._adopt(self.store.running())
            self._read_at = self.clock()

    def _adopt(self, experiment: Experiment | None) -> None:
        if experiment != self._running:
            log.info("A/B experiment: %s", experiment.name if experiment else "none running")
            arms = experiment.arms if experiment else ()
            if isinstance(self.state.engine, MemoryEngine):  # it keeps the arms' builds loaded beside the served
                self.state.engine.keep(frozenset(arm.collection for arm in arms if arm.collection))
            self._builds = {}
        self._running = experiment

    def apply(
        self, request: RetrieveRequest, tenant: str, unit: str | None, snapshot: IndexSnapshot
    ) -> tuple[RetrieveRequest, IndexSnapshot, Assignment | None]:
        """The request as the caller's arm serves it, the snapshot it searches, and the assignment (None
        outside an experiment: nothing running, no unit to assign, or an excluded tenant)."""
        experiment = self.running()
        if experiment is None or unit is None:
            return request, snapshot, None
        arm = assign(experiment, unit, tenant)
        if arm is None:
            return request, snapshot, None
        if arm.collection and arm.collection != snapshot.collection:
            try:
                snapshot = self._build(arm.collection, snapshot)
            except (IndexNotReady, FileNotFoundError) as error:  # dropped meanwhile: served outside the experiment
                log.warning("arm %s of %s cannot be served (%s)", arm.name, experiment.name, error)
                return request, snapshot, None
        llm = replace(self.state.llm, model=arm.llm_model) if arm.llm_model else self.state.llm
        overridden = _overridden(request, arm, self.state.settings.max_top_k)
        return overridden, snapshot, Assignment(experiment.name, arm, llm)

    def check(self, experiment: Experiment) -> None:
        """Raises ValueError unless every arm's build can be served (before the experiment starts)."""
        for arm in experiment.arms:
            if arm.collection:
                try:
                    self.state.engine.build(arm.collection)
                except (IndexNotReady, FileNotFoundError) as error:
                    raise ValueError(
                        f"arm {arm.name}: {arm.collection} cannot be served ({error}) — `rag builds` lists the builds"
                    ) from error

    def _build(self, collection: str, served: IndexSnapshot) -> IndexSnapshot:
        """The arm's build, re-resolved every `alias_poll_s` (it may still be written to)."""
        cached = self._builds.get(collection)
        if cached is not None and self.clock() - cached[1] < self.state.settings.alias_poll_s:
            return replace(cached[0], disabled=served.disabled)
        build = self.state.engine.build(collection)
        record = BuildRecord.from_properties(build.properties)
        embedder = (
            served.embedder
            if record.embedding_version == served.embedding_version
            else (cached[0].embedder if cached and cached[0].embedding_version == record.embedding_version else None)
        ) or self.state.embedder_for(build.properties)
        if embedder.version != record.embedding_version:  # RAG_EMBEDDING_MODEL pins another model
            raise IndexNotReady(
                f"{collection} was built with {record.embedding_version} but this server embeds with {embedder.version}"
                " — unset RAG_EMBEDDING_MODEL to serve builds of other models"
            )
        snapshot = replace(
            served,
            collection=build.collection,
            index_version=build.version,
            embedding_version=record.embedding_version,
            rows=build.rows,
            embedder=embedder,
            searcher=build.searcher,
            fusion=served_fusion(record, self.state.fusion, self.state.fusion_configured),
        )
        self._builds[collection] = (snapshot, self.clock())
        return snapshot


def _overridden(request: RetrieveRequest, arm: Arm, max_top_k: int) -> RetrieveRequest:
    """The arm's settings win over the request's: the arm is what is being tested."""
    overrides = {
        "mode": arm.mode,
        "top_k": None if arm.top_k is None else min(arm.top_k, max_top_k),
        "fusion": arm.fusion,
        "dense_weight": arm.dense_weight,
        "bm25_weight": arm.bm25_weight,
        "rrf_k": arm.rrf_k,
    }
    changes = {name: value for name, value in overrides.items() if value is not None}
    return request.model_copy(update=changes) if changes else request


def unit_of(user_id: str | None, key_id: str | None) -> str | None:
    """What an assignment sticks to: the caller's user, else its API key; None for an anonymous caller."""
    if user_id:
        return f"user:{user_id}"
    return f"key:{key_id}" if key_id else None


def observe(
    state: ServingState, assigned: Assignment | None, route: str, timings: dict[str, float], degraded: bool
) -> None:
    """The arm's request in the Prometheus metrics Grafana's experiment panels read."""
    if assigned is None:
        return
    labels = (assigned.experiment, assigned.arm.name)
    state.metrics.arm_requests.labels(*labels, route).inc()
    state.metrics.arm_retrieval.labels(*labels).observe(sum(timings.get(s, 0.0) for s in RETRIEVAL_STAGES) / 1000)
    if degraded:
        state.metrics.arm_degraded.labels(*labels).inc()


def observe_feedback(state: ServingState, query_id: str, rating: int | None, is_relevant: bool | None) -> None:
    """Feedback on a query an arm served, in the Prometheus metrics (read back from the query log)."""
    served_by = arm_of(state.db.engine, query_id)
    if served_by is None:
        return
    if is_relevant is not None:
        state.metrics.arm_feedback.labels(*served_by, "relevant" if is_relevant else "irrelevant").inc()
    if rating is not None:
        state.metrics.arm_feedback.labels(*served_by, "rated").inc()
        state.metrics.arm_rating.labels(*served_by).inc(rating)
