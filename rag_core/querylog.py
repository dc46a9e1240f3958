"""The serving database (SQLAlchemy: SQLite by default, PostgreSQL in production): the query log,
user feedback and API keys. Keys are stored hashed; the plain key is shown once, when it is created.

Neither write nor lookup on the request path waits for the database: a checked key is trusted from
memory for `auth_cache_ttl_s`, and a logged query is queued and written in batches by a background
thread. `flush()` writes the queue now; `close()` flushes and stops the thread."""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import logging
import secrets
import threading
import time
import uuid
import weakref
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Generic, TypeVar

import sqlalchemy as sa

from rag_core.pii import redact
from rag_core.tables import create_tables
from rag_core.tenants import Tenant, UnknownTenant, validate_limit, validate_tenant

log = logging.getLogger(__name__)

metadata = sa.MetaData()
queries = sa.Table(
    "rag_queries",
    metadata,
    sa.Column("query_id", sa.String(36), primary_key=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, index=True),
    sa.Column("tenant", sa.String(128), nullable=False),
    sa.Column("key_id", sa.String(32), nullable=True),
    sa.Column("question", sa.Text, nullable=False),
    sa.Column("mode", sa.String(16), nullable=False),
    sa.Column("top_k", sa.Integer, nullable=False),
    sa.Column("chunk_ids", sa.Text, nullable=False),
    sa.Column("timings_ms", sa.Text, nullable=False),
    sa.Column("model", sa.String(256), nullable=False),
    sa.Column("index_version", sa.String(128), nullable=False),
    sa.Column("degraded", sa.Boolean, nullable=False, default=False),
    sa.Column("cached", sa.Boolean, nullable=False, default=False),
    # The answer's MLflow trace (rag_core.tracing); added after the table was first shipped, so create_tables
    # adds it to an existing table. None: a retrieval, tracing off or not ready.
    sa.Column("trace_id", sa.String(64), nullable=True),
    # The A/B experiment and arm that served the query (rag_core.experiments); None outside an experiment.
    # Added like trace_id: create_tables adds them to an existing table.
    sa.Column("experiment", sa.String(64), nullable=True, index=True),
    sa.Column("arm", sa.String(64), nullable=True),
)
feedback = sa.Table(
    "rag_feedback",
    metadata,
    sa.Column("feedback_id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("query_id", sa.String(36), sa.ForeignKey("rag_queries.query_id"), nullable=False, index=True),
    sa.Column("rating", sa.Integer, nullable=True),
    sa.Column("is_relevant", sa.Boolean, nullable=True),
    sa.Column("comment", sa.Text, nullable=False, default=""),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    # The chunk the user clicked or found cited, when the feedback names one: its rank is an A/B metric.
    sa.Column("chunk_id", sa.String(128), nullable=True),
)
api_keys = sa.Table(
    "rag_api_keys",
    metadata,
    sa.Column("key_id", sa.String(32), primary_key=True),
    sa.Column("key_hash", sa.String(64), nullable=False),
    sa.Column("tenant", sa.String(128), nullable=False),
    sa.Column("name", sa.String(256), nullable=False, default=""),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("revoked", sa.Boolean, nullable=False, default=False),
)
# Tenants as records (rag_core.tenants.Tenant): their limits. A key created for an unknown tenant creates it,
# and the tenants of keys created before this table existed are recorded when the database is opened.
tenants = sa.Table(
    "rag_tenants",
    metadata,
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("rate_limit_per_minute", sa.Integer, nullable=True),  # None: RAG_RATE_LIMIT_PER_MINUTE
    sa.Column("max_documents", sa.Integer, nullable=True),  # None: no quota
)


def storable(row: dict[str, Any]) -> dict[str, Any]:
    """PostgreSQL text cannot hold NUL (psycopg2 raises ValueError, not DataError, so a retry would loop):
    the API refuses it at the schema, and here it is replaced wherever a row came from."""
    return {key: value.replace("\x00", "\ufffd") if isinstance(value, str) else value for key, value in row.items()}


@dataclass(frozen=True)
class ApiKey:
    key_id: str
    tenant: str
    name: str


@dataclass(frozen=True)
class StoredKey:
    """A key as the admin sees it: never the secret, which only its creator saw once."""

    key_id: str
    tenant: str
    name: str
    created_at: datetime
    revoked: bool


def key_id_of(plain: str) -> str:
    """The id inside a plain key `rag_<key_id>_<secret>`."""
    return plain.split("_", 2)[1]


@dataclass(frozen=True)
class LoggedFeedback:
    rating: int | None
    is_relevant: bool | None
    comment: str
    created_at: datetime


@dataclass(frozen=True)
class LoggedQuery:
    query_id: str
    created_at: datetime
    question: str
    mode: str
    top_k: int
    chunk_ids: list[str]
    timings_ms: dict[str, float]
    model: str
    index_version: str
    degraded: bool
    cached: bool
    feedback: list[LoggedFeedback]
    trace_id: str | None = None  # the answer's MLflow trace (rag_core.tracing)


@dataclass(frozen=True)
class QueryLogFilter:
    """What a browser of the query log narrows it to; None / "" = no restriction."""

    since: datetime | None = None
    until: datetime | None = None
    degraded: bool | None = None
    rated: bool | None = None
    text: str = ""


def _like_pattern(text: str) -> str:
    """`text` as a LIKE pattern that matches it literally anywhere (escape character `\\`)."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


V = TypeVar("V")


@dataclass(frozen=True)
class _Checked(Generic[V]):
    key: V | None  # None: the presented key is invalid or revoked (the tenant unknown)
    expires: float


class _KeyCache(Generic[V]):
    """Checked keys by the SHA-256 of the presented key (tenant records by name), least recently used first
    out. A found value is trusted for `ttl_s`; a missing one is remembered for a fifth of that, only to spare
    the database a client retrying a bad key. `ttl_s` 0 turns the cache off."""

    def __init__(self, ttl_s: float, max_entries: int, clock: Callable[[], float]) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self.clock = clock
        self._entries: OrderedDict[str, _Checked[V]] = OrderedDict()
        self._lock = threading.Lock()
        # Bumped by clear(): a lookup that started before a revocation must not cache what it read.
        self.generation = 0

    def get(self, digest: str) -> _Checked[V] | None:
        with self._lock:
            entry = self._entries.get(digest)
            if entry is None:
                return None
            if entry.expires <= self.clock():
                del self._entries[digest]
                return None
            self._entries.move_to_end(digest)
            return entry

    def put(self, digest: str, key: V | None, generation: int) -> None:
        ttl_s = self.ttl_s if key is not None else self.ttl_s / 5
        if ttl_s <= 0:
            return
        with self._lock:
            if generation != self.generation:
                return
            self._entries[digest] = _Checked(key, self.clock() + ttl_s)
            self._entries.move_to_end(digest)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self.generation += 1


class _QueryLogWriter:
    """The query log's write-behind queue.

    Rows wait in `pending` (by query id, oldest first) until the batch holding them is committed, so a
    queued query is always visible to `query_exists` and `add_feedback`. A background thread, started
    by the first row, writes once `batch_rows` are waiting or `interval_s` after the first one. A failed
    batch stays queued and is retried after `retry_delay_s`, doubling up to `max_retry_delay_s`.

    The queue holds at most `max_pending` rows. When it is full while the database answers (it is
    slower than the traffic), the request writes its own row: back-pressure, nothing lost. When it is
    full because the database is failing, the row is dropped, counted in `dropped` and logged: a log
    row is not worth blocking requests on an outage or growing memory without bound."""

    def __init__(
        self,
        engine: sa.Engine,
        interval_s: float,
        batch_rows: int,
        max_pending: int,
        retry_delay_s: float,
        max_retry_delay_s: float,
    ) -> None:
        self.engine = engine
        self.interval_s = interval_s
        self.batch_rows = batch_rows
        self.max_pending = max_pending
        self.retry_delay_s = retry_delay_s
        self.max_retry_delay_s = max_retry_delay_s
        self.pending: dict[str, dict[str, Any]] = {}
        self.dropped = 0
        self.refused = 0
        self._condition = threading.Condition()
        # One writer at a time, and a row leaves `pending` only after its commit: never written twice.
        self._write_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._failing = False
        self._drop_logged = False

    def put(self, row: dict[str, Any]) -> None:
        with self._condition:
            if not self._stopping and len(self.pending) < self.max_pending:
                self.pending[row["query_id"]] = row
                if self._thread is None or not self._thread.is_alive():  # first row, or a forked process
                    self._thread = threading.Thread(target=self._run, name="query-log-writer", daemon=True)
                    self._thread.start()
                self._condition.notify()
                return
            failing = self._failing
        if failing:
            self._drop(row, "the database is failing and the queue is full")
            return
        try:  # full (or closed) and the database answers: this request writes its own row
            self._insert([row])
        except Exception as error:
            with self._condition:
                self._failing = True
            self._drop(row, f"{type(error).__name__}: {error}")

    def queued(self, query_id: str) -> dict[str, Any] | None:
        with self._condition:
            return self.pending.get(query_id)

    def write_pending(self) -> None:
        """Write the rows queued when called; raises, leaving them queued, if the database fails."""
        with self._write_lock:
            with self._condition:
                remaining = len(self.pending)
            while remaining > 0:
                with self._condition:
                    batch = list(itertools.islice(self.pending.values(), min(remaining, self.batch_rows)))
                if not batch:
                    return
                try:
                    self._insert(batch)
                except Exception:
                    with self._condition:
                        self._failing = True
                    raise
                with self._condition:
                    for row in batch:
                        del self.pending[row["query_id"]]
                    if self._failing:
                        log.info("the query log is writing again (%d rows dropped so far)", self.dropped)
                    self._failing = self._drop_logged = False
                remaining -= len(batch)

    def close(self) -> None:
        """Stop the thread and write everything still queued."""
        with self._condition:
            self._stopping = True
            self._condition.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join()
        try:
            self.write_pending()
        except Exception as error:
            log.error(
                "%d queued queries could not be written to the query log at shutdown (%s: %s)",
                len(self.pending),
                type(error).__name__,
                error,
            )

    def _run(self) -> None:
        retry_delay = 0.0
        while True:
            with self._condition:
                if retry_delay:
                    self._condition.wait_for(lambda: self._stopping, timeout=retry_delay)
                else:
                    self._condition.wait_for(lambda: self._stopping or bool(self.pending))
                    self._condition.wait_for(
                        lambda: self._stopping or len(self.pending) >= self.batch_rows, timeout=self.interval_s
                    )
                if self._stopping:
                    return  # close() writes what is left
            try:
                self.write_pending()
                retry_delay = 0.0
            except Exception as error:
                retry_delay = min(self.max_retry_delay_s, max(self.retry_delay_s, retry_delay * 2))
                log.warning(
                    "writing %d queued queries to the query log failed (%s: %s); retrying in %.1f s",
                    len(self.pending),
                    type(error).__name__,
                    error,
                    retry_delay,
                )

    def _insert(self, rows: list[dict[str, Any]]) -> None:
        try:
            with self.engine.begin() as connection:
                connection.execute(queries.insert(), [storable(row) for row in rows])
        except (sa.exc.IntegrityError, sa.exc.DataError) as error:
            # The database refuses a row, not the batch (a value too long; an id a retry already wrote):
            # write the others one by one so one bad row cannot hold the log up forever.
            if len(rows) > 1:
                for row in rows:
                    self._insert([row])
                return
            with self.engine.connect() as connection:
                written = queries.c.query_id == rows[0]["query_id"]
                if connection.execute(sa.select(queries.c.query_id).where(written)).first() is not None:
                    return  # written by an earlier attempt whose commit was not acknowledged
            with self._condition:
                self.refused += 1
            log.error("the query log refused query %s and dropped it: %s", rows[0]["query_id"], error.orig)

    def _drop(self, row: dict[str, Any], reason: str) -> None:
        with self._condition:
            self.dropped += 1
            quiet, self._drop_logged = self._drop_logged, True
        if not quiet:  # once per outage, not once per request
            log.warning("query %s was not logged: %s (%d dropped so far)", row["query_id"], reason, self.dropped)


class ServingDatabase:
    def __init__(
        self,
        url: str,
        *,
        auth_cache_ttl_s: float = 5.0,
        auth_cache_size: int = 10_000,
        log_interval_s: float = 0.1,
        log_batch_rows: int = 500,
        log_max_pending: int = 10_000,
        log_retry_delay_s: float = 0.5,
        log_max_retry_delay_s: float = 10.0,
        redact_pii: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        self.engine = sa.create_engine(url, pool_pre_ping=True)
        create_tables(metadata, self.engine)
        # RAG_REDACT_PII: users' questions and comments are redacted like the documents before they are stored.
        self.redact_pii = redact_pii
        self._keys: _KeyCache[ApiKey] = _KeyCache(auth_cache_ttl_s, auth_cache_size, clock)
        # Tenant records for the request path (their rate limit), trusted as long as a checked key.
        self._tenants: _KeyCache[Tenant] = _KeyCache(auth_cache_ttl_s, auth_cache_size, clock)
        self._record_key_tenants()
        self._query_log = _QueryLogWriter(
            self.engine, log_interval_s, log_batch_rows, log_max_pending, log_retry_delay_s, log_max_retry_delay_s
        )
        # A process that forgets close() still writes its queue when this object goes or at exit.
        self._finalizer = weakref.finalize(self, self._query_log.close)

    def flush(self) -> None:
        """Write every queued query now. Raises if the database fails (the rows stay queued)."""
        self._query_log.write_pending()

    def close(self) -> None:
        """Write every queued query, stop the writer thread and release the connections."""
        self._finalizer()
        self.engine.dispose()

    @property
    def queued_queries(self) -> int:
        return len(self._query_log.pending)

    @property
    def dropped_queries(self) -> int:
        """Queries not logged because the queue was full while the database failed, or refused by it."""
        return self._query_log.dropped + self._query_log.refused

    # ---- API keys
    def create_key(self, tenant: str, name: str = "") -> str:
        """The plain key, shown once; an unknown tenant is created with the default limits. Raises
        InvalidTenant for a tenant name outside TENANT_PATTERN."""
        validate_tenant(tenant)
        key_id = secrets.token_hex(6)
        plain = f"rag_{key_id}_{secrets.token_urlsafe(24)}"
        self._ensure_tenant(tenant)
        with self.engine.begin() as connection:
            connection.execute(
                api_keys.insert().values(
                    key_id=key_id, key_hash=_hash(plain), tenant=tenant, name=name, created_at=datetime.now(UTC)
                )
            )
        return plain

    def authenticate(self, plain: str) -> ApiKey | None:
        parts = plain.split("_")
        if len(parts) < 3 or parts[0] != "rag":
            return None
        digest = _hash(plain)
        # Looked up by digest: the lookup's timing can tell at most something about a SHA-256, which
        # does not help to find a key. The database path below compares in constant time.
        if (checked := self._keys.get(digest)) is not None:
            return checked.key
        generation = self._keys.generation
        with self.engine.connect() as connection:
            row = connection.execute(sa.select(api_keys).where(api_keys.c.key_id == parts[1])).mappings().first()
        if row is None or row["revoked"] or not hmac.compare_digest(row["key_hash"], digest):
            key = None
        else:
            key = ApiKey(row["key_id"], row["tenant"], row["name"])
        self._keys.put(digest, key, generation)
        return key

    def revoke_key(self, key_id: str) -> bool:
        """Revoked at once in this process; other processes stop trusting the key within their TTL."""
        with self.engine.begin() as connection:
            result = connection.execute(api_keys.update().where(api_keys.c.key_id == key_id).values(revoked=True))
        self._keys.clear()
        return result.rowcount > 0

    def list_keys(self, tenant: str | None = None) -> list[StoredKey]:
        """Every key (of `tenant`), newest first."""
        query = sa.select(api_keys).order_by(api_keys.c.created_at.desc(), api_keys.c.key_id)
        if tenant is not None:
            query = query.where(api_keys.c.tenant == tenant)
        with self.engine.connect() as connection:
            rows = connection.execute(query).mappings().all()
        return [
            StoredKey(row["key_id"], row["tenant"], row["name"], _utc(row["created_at"]), bool(row["revoked"]))
            for row in rows
        ]

    # ---- tenants
    def create_tenant(
        self, name: str, rate_limit_per_minute: int | None = None, max_documents: int | None = None
    ) -> Tenant | None:
        """The new tenant; None when one of that name exists already. Raises InvalidTenant, or ValueError
        for a negative limit."""
        validate_tenant(name)
        validate_limit(rate_limit_per_minute, "rate_limit_per_minute")
        validate_limit(max_documents, "max_documents")
        created = Tenant(name, datetime.now(UTC), rate_limit_per_minute, max_documents)
        try:
            with self.engine.begin() as connection:
                connection.execute(tenants.insert().values(**vars(created)))
        except sa.exc.IntegrityError:
            return None
        self._tenants.clear()
        return created

    def tenant(self, name: str) -> Tenant | None:
        """The tenant's record, from the database."""
        with self.engine.connect() as connection:
            row = connection.execute(sa.select(tenants).where(tenants.c.name == name)).mappings().first()
        return None if row is None else Tenant(**{**row, "created_at": _utc(row["created_at"])})

    def cached_tenant(self, name: str) -> Tenant | None:
        """The tenant's record for the request path: from memory for `auth_cache_ttl_s`, like a checked key,
        so a request costs no SQL for it. Other processes see a change of limits within that TTL. While the
        database does not answer, None (the deployment's limits): a request whose key is trusted from memory
        keeps being served through an outage, as it was before tenants had records."""
        if (checked := self._tenants.get(name)) is not None:
            return checked.key
        generation = self._tenants.generation
        try:
            found = self.tenant(name)
        except (sa.exc.OperationalError, sa.exc.InterfaceError) as error:
            log.warning("tenant %s could not be read (%s); applying the deployment's limits", name, error.orig)
            return None
        self._tenants.put(name, found, generation)
        return found

    def list_tenants(self) -> list[Tenant]:
        """Every tenant, by name."""
        with self.engine.connect() as connection:
            rows = connection.execute(sa.select(tenants).order_by(tenants.c.name)).mappings().all()
        return [Tenant(**{**row, "created_at": _utc(row["created_at"])}) for row in rows]

    def set_tenant_limits(self, name: str, **limits: int | None) -> Tenant:
        """Set these of `rate_limit_per_minute` and `max_documents` (None: the deployment's default); the
        others stay. Raises UnknownTenant, or ValueError for a negative limit."""
        for field, value in limits.items():
            if field not in ("rate_limit_per_minute", "max_documents"):
                raise ValueError(f"{field} is not a tenant limit: use rate_limit_per_minute or max_documents")
            validate_limit(value, field)
        if limits:
            with self.engine.begin() as connection:
                connection.execute(tenants.update().where(tenants.c.name == name).values(**limits))
            self._tenants.clear()
        found = self.tenant(name)
        if found is None:
            raise UnknownTenant(f"no tenant {name} — `rag tenant list` shows the tenants")
        return found

    def delete_tenant_keys(self, name: str) -> int:
        """Delete the tenant's API keys (not revoke: nothing of the tenant stays) and forget the checked ones,
        so this process refuses them at once; other processes within `auth_cache_ttl_s`. How many there were."""
        with self.engine.begin() as connection:
            deleted = connection.execute(api_keys.delete().where(api_keys.c.tenant == name)).rowcount
        self._keys.clear()
        return deleted

    def delete_tenant_records(self, name: str) -> dict[str, int]:
        """Delete the tenant's rows of this database — its keys, feedback on its queries, its query log and
        the tenant itself; {table: rows deleted}. Keys go first, then the queue is written, so a query still
        in flight is in the table when its rows are deleted."""
        keys = self.delete_tenant_keys(name)
        self.flush()
        its_queries = sa.select(queries.c.query_id).where(queries.c.tenant == name)
        with self.engine.begin() as connection:
            given = connection.execute(feedback.delete().where(feedback.c.query_id.in_(its_queries))).rowcount
            logged = connection.execute(queries.delete().where(queries.c.tenant == name)).rowcount
            record = connection.execute(tenants.delete().where(tenants.c.name == name)).rowcount
        self._tenants.clear()
        return {"feedback": given, "queries": logged, "api_keys": keys, "tenants": record}

    def _ensure_tenant(self, name: str) -> None:
        with self.engine.connect() as connection:
            if connection.execute(sa.select(tenants.c.name).where(tenants.c.name == name)).first() is not None:
                return
        self.create_tenant(name)  # None when another process created it meanwhile: as good

    def _record_key_tenants(self) -> None:
        """Record the tenants that only keys name (keys created before tenants were records)."""
        unrecorded = sa.select(sa.distinct(api_keys.c.tenant)).where(~api_keys.c.tenant.in_(sa.select(tenants.c.name)))
        with self.engine.connect() as connection:
            names = list(connection.execute(unrecorded).scalars())
        for name in names:
            try:
                self.create_tenant(name)
            except ValueError:  # InvalidTenant: a name from before names were checked stays unrecorded
                log.warning("the API keys of tenant %r name no valid tenant; revoke them", name)

    # ---- query log
    def log_query(
        self,
        *,
        tenant: str,
        question: str,
        mode: str,
        top_k: int,
        index_version: str,
        model: str = "",
        key_id: str | None = None,
        chunk_ids: Sequence[str] = (),
        timings_ms: Mapping[str, float] | None = None,
        degraded: bool = False,
        cached: bool = False,
        query_id: str | None = None,
        trace_id: str | None = None,
        experiment: str | None = None,
        arm: str | None = None,
    ) -> str:
        """Queue the query for the log and return its id at once; the row is written within ~`log_interval_s`."""
        query_id = query_id or str(uuid.uuid4())
        self._query_log.put(
            {
                "query_id": query_id,
                "created_at": datetime.now(UTC),
                "tenant": tenant,
                "key_id": key_id,
                "question": self._redacted(question),
                "mode": mode,
                "top_k": top_k,
                "chunk_ids": json.dumps(list(chunk_ids)),
                "timings_ms": json.dumps(dict(timings_ms or {})),
                "model": model,
                "index_version": index_version,
                "degraded": degraded,
                "cached": cached,
                "trace_id": trace_id,
                "experiment": experiment,
                "arm": arm,
            }
        )
        return query_id

    def query_exists(self, query_id: str, tenant: str | None = None) -> bool:
        if (queued := self._query_log.queued(query_id)) is not None:
            return tenant is None or queued["tenant"] == tenant
        condition = queries.c.query_id == query_id
        if tenant is not None:
            condition = condition & (queries.c.tenant == tenant)
        with self.engine.connect() as connection:
            return connection.execute(sa.select(queries.c.query_id).where(condition)).first() is not None

    def query_log(
        self, tenant: str, where: QueryLogFilter, offset: int = 0, limit: int = 50
    ) -> tuple[int, list[LoggedQuery]]:
        """(how many of `tenant`'s queries match, the page of them from `offset`), newest first, each with
        its feedback."""
        self.flush()
        condition = self._log_condition(tenant, where)
        with self.engine.connect() as connection:
            total = connection.execute(sa.select(sa.func.count()).select_from(queries).where(condition)).scalar() or 0
            rows = (
                connection.execute(
                    sa.select(queries)
                    .where(condition)
                    .order_by(queries.c.created_at.desc(), queries.c.query_id)
                    .offset(offset)
                    .limit(limit)
                )
                .mappings()
                .all()
            )
            ids = [row["query_id"] for row in rows]
            given = connection.execute(
                sa.select(feedback).where(feedback.c.query_id.in_(ids)).order_by(feedback.c.feedback_id)
            ).mappings()
            by_query: dict[str, list[LoggedFeedback]] = {}
            for row in given:
                by_query.setdefault(row["query_id"], []).append(
                    LoggedFeedback(row["rating"], row["is_relevant"], row["comment"], _utc(row["created_at"]))
                )
        return total, [
            LoggedQuery(
                query_id=row["query_id"],
                created_at=_utc(row["created_at"]),
                question=row["question"],
                mode=row["mode"],
                top_k=row["top_k"],
                chunk_ids=json.loads(row["chunk_ids"]),
                timings_ms=json.loads(row["timings_ms"]),
                model=row["model"],
                index_version=row["index_version"],
                degraded=bool(row["degraded"]),
                cached=bool(row["cached"]),
                feedback=by_query.get(row["query_id"], []),
                trace_id=row["trace_id"],
            )
            for row in rows
        ]

    @staticmethod
    def _log_condition(tenant: str, where: QueryLogFilter) -> sa.ColumnElement[bool]:
        condition = queries.c.tenant == tenant
        if where.since is not None:
            condition &= queries.c.created_at >= where.since
        if where.until is not None:
            condition &= queries.c.created_at < where.until
        if where.degraded is not None:
            condition &= queries.c.degraded.is_(where.degraded)
        if where.rated is not None:
            rated = sa.exists().where(feedback.c.query_id == queries.c.query_id)
            condition &= rated if where.rated else ~rated
        if where.text:
            condition &= queries.c.question.ilike(_like_pattern(where.text), escape="\\")
        return condition

    def _redacted(self, text: str) -> str:
        return redact(text)[0] if self.redact_pii and text else text

    # ---- feedback
    def add_feedback(
        self, query_id: str, rating: int | None, is_relevant: bool | None, comment: str, chunk_id: str | None = None
    ) -> int:
        if self._query_log.queued(query_id) is not None:
            self.flush()  # the feedback row references the query row
        with self.engine.begin() as connection:
            result = connection.execute(
                feedback.insert().values(
                    query_id=query_id,
                    rating=rating,
                    is_relevant=is_relevant,
                    chunk_id=chunk_id,
                    comment=storable({"comment": self._redacted(comment)})["comment"],
                    created_at=datetime.now(UTC),
                )
            )
        return int(result.inserted_primary_key[0])

    def relevant_pairs(self) -> list[tuple[str, list[str]]]:
        """(question, retrieved chunk ids) of queries users marked relevant: training pairs for fine-tuning."""
        self.flush()
        query = (
            sa.select(queries.c.question, queries.c.chunk_ids)
            .join(feedback, feedback.c.query_id == queries.c.query_id)
            .where(feedback.c.is_relevant.is_(True))
        )
        with self.engine.connect() as connection:
            return [(question, json.loads(ids)) for question, ids in connection.execute(query)]

    def relevant_pairs_since(self, moment: datetime | None) -> int:
        """How many of `relevant_pairs` were judged after `moment` (None: ever): what a model update counts."""
        self.flush()
        query = (
            sa.select(sa.func.count())
            .select_from(feedback.join(queries, feedback.c.query_id == queries.c.query_id))
            .where(feedback.c.is_relevant.is_(True))
        )
        if moment is not None:
            query = query.where(feedback.c.created_at > moment)
        with self.engine.connect() as connection:
            return int(connection.execute(query).scalar() or 0)

    def analytics(self, tenant: str | None = None, worst: int = 10) -> dict[str, Any]:
        self.flush()
        scope = (queries.c.tenant == tenant) if tenant is not None else sa.true()
        with self.engine.connect() as connection:
            total = connection.execute(sa.select(sa.func.count()).select_from(queries).where(scope)).scalar() or 0
            joined = feedback.join(queries, feedback.c.query_id == queries.c.query_id)
            row = connection.execute(
                sa.select(
                    sa.func.count(sa.distinct(feedback.c.query_id)),
                    sa.func.count(),
                    sa.func.avg(feedback.c.rating),
                    sa.func.sum(sa.case((feedback.c.is_relevant.is_(True), 1), else_=0)),
                    sa.func.count(feedback.c.is_relevant),
                )
                .select_from(joined)
                .where(scope)
            ).one()
            worst_rows = connection.execute(
                sa.select(queries.c.query_id, queries.c.question, sa.func.avg(feedback.c.rating).label("rating"))
                .select_from(joined)
                .where(scope & feedback.c.rating.is_not(None))
                .group_by(queries.c.query_id, queries.c.question)
                .order_by(sa.func.avg(feedback.c.rating), queries.c.query_id)
                .limit(worst)
            ).all()
        with_feedback, feedback_count, mean_rating, relevant, judged = row
        return {
            "queries": total,
            "feedback": feedback_count,
            "feedback_rate": round(with_feedback / total, 4) if total else 0.0,
            "mean_rating": round(float(mean_rating), 3) if mean_rating is not None else None,
            "relevance_rate": round((relevant or 0) / judged, 4) if judged else None,
            "worst_queries": [
                {"query_id": r.query_id, "question": r.question, "mean_rating": round(float(r.rating), 3)}
                for r in worst_rows
            ],
        }


def _utc(moment: datetime) -> datetime:
    """SQLite hands timestamps back without their zone; they were written in UTC."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
