"""Where a tenant's data lives, and the two things an admin does with all of it at once: count it, and
delete it.

A tenant's data is its files (`tenant=<name>/` in the documents folder, and the staged outputs of their
partitions), its catalog rows (source partitions, disabled chunks), its vectors in every build of the alias
(served and candidates: `tenant` is the collections' partition key), its cache entries and rate-limit
windows in Redis, and its rows in the serving database (query log, feedback, conversations, API keys, the
tenant record, its name in experiments' exclusions). `purge_tenant` deletes every one of them and says how
much it found in each place; the admin route and `rag tenant delete` both call it.

Deleting vectors goes through `MilvusStore.delete_chunks`, which also appends the deletion to the search
log: an in-memory engine (rag_core.search.engines.MemoryEngine) applies it at its next poll, and the served
index version changes with it, so no cached result outlives the rows.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa
from redis.exceptions import RedisError

from rag_core.cache import Cache, tenant_prefix
from rag_core.catalog import Catalog, disabled_chunks, source_partitions
from rag_core.conversations import ConversationStore, conversations, turns
from rag_core.documents import SUPPORTED_SUFFIXES, TENANT_DIR_PREFIX, suffix_of
from rag_core.errors import Refusal
from rag_core.experiments import ExperimentStore, experiments
from rag_core.querylog import ServingDatabase
from rag_core.ratelimit import RateLimiter
from rag_core.search.filters import SearchFilter, milvus_string
from rag_core.store import MilvusStore
from rag_core.tenants import UnknownTenant, validate_tenant

log = logging.getLogger(__name__)


class PurgeIncomplete(Refusal):
    """A store did not answer half-way through a purge; running it again finishes it."""


def tenant_folder(documents_dir: Path, tenant: str, default_tenant: str) -> Path:
    """The folder holding `tenant`'s files: the documents folder itself for the default tenant."""
    if tenant == default_tenant:
        return documents_dir
    return documents_dir / f"{TENANT_DIR_PREFIX}{validate_tenant(tenant)}"


def stored_documents(documents_dir: Path, tenant: str, default_tenant: str) -> list[Path]:
    """The tenant's document files as the sensor sees them (supported, not hidden); what `max_documents` counts.
    The default tenant's are those outside every `tenant=<name>/` folder."""
    folder = tenant_folder(documents_dir, tenant, default_tenant)
    if not folder.is_dir():
        return []
    found = []
    for path in folder.rglob("*"):
        parts = path.relative_to(folder).parts
        if any(part.startswith(".") for part in parts):
            continue
        if folder == documents_dir and len(parts) > 1 and parts[0].startswith(TENANT_DIR_PREFIX):
            continue  # another tenant's folder
        if suffix_of(path) in SUPPORTED_SUFFIXES and (path.is_file() or path.is_symlink()):
            found.append(path)
    return found


@dataclass(frozen=True)
class TenantUsage:
    files: int  # in the documents folder, indexed or not: what max_documents counts
    documents: int  # recorded by the catalog (a JSONL corpus file holds many)
    chunks: int  # rows of the tenant in the served build; 0 when nothing is served


def tenant_usage(
    tenant: str, documents_dir: Path, default_tenant: str, catalog: Catalog, served_rows: Callable[[SearchFilter], int]
) -> TenantUsage:
    """The tenant's files, catalog documents and served chunks. `served_rows` counts the served build's rows a
    filter allows (the serving process asks its engine; the CLI asks Milvus: `served_chunk_count`)."""
    with catalog.engine.connect() as connection:
        documents = connection.execute(
            sa.select(sa.func.coalesce(sa.func.sum(source_partitions.c.documents), 0)).where(
                source_partitions.c.tenant == tenant
            )
        ).scalar()
    return TenantUsage(
        files=len(stored_documents(documents_dir, tenant, default_tenant)),
        documents=int(documents or 0),
        chunks=served_rows(SearchFilter(tenant, rows="chunks")),
    )


def served_chunk_count(store: MilvusStore, search_filter: SearchFilter) -> int:
    """Rows of the served build the filter allows, counted in Milvus; 0 when nothing is served."""
    collection = store.alias_target()
    if collection is None:
        return 0
    return sum(1 for _row in store.rows_where(collection, search_filter.expression(), ["chunk_id"]))


@dataclass
class PurgeReport:
    """What `purge_tenant` deleted, per place."""

    tenant: str
    files: int = 0
    staged_files: int = 0
    catalog_rows: int = 0
    disabled_chunks: int = 0
    vectors: dict[str, int] = field(default_factory=dict)  # {collection: rows}
    cache_entries: int = 0
    rate_limit_windows: int = 0
    queries: int = 0
    feedback: int = 0
    conversations: int = 0
    conversation_turns: int = 0
    experiment_exclusions: int = 0
    api_keys: int = 0

    def counts(self) -> dict[str, int]:
        """Every count, the vectors summed over the collections."""
        values = {name: value for name, value in vars(self).items() if isinstance(value, int)}
        return {**values, "vectors": sum(self.vectors.values())}


@dataclass(frozen=True)
class TenantPlaces:
    """The stores a purge reaches. `open_store` opens Milvus for one block (IndexConnection.store)."""

    documents_dir: Path
    staging_dir: Path
    default_tenant: str
    database: ServingDatabase
    catalog: Catalog
    open_store: Callable[[], AbstractContextManager[MilvusStore]]
    cache: Cache
    limiter: RateLimiter


def purge_tenant(tenant: str, places: TenantPlaces) -> PurgeReport:
    """Delete everything of `tenant`, then its record. Keys go first (the tenant can no longer call), the
    record last, so a purge that fails half-way (Milvus or Redis down) can simply be run again. Refuses the
    default tenant (its documents are the folder's root) and a tenant the database does not know.

    A document an indexing run is writing at this moment may land after the purge: run it again then."""
    check_deletable(tenant, places.default_tenant, places.database)
    report = PurgeReport(tenant)
    key_ids = [key.key_id for key in places.database.list_keys(tenant)]
    report.api_keys = places.database.delete_tenant_keys(tenant)
    partition_keys = _catalog_keys(places.catalog, tenant)
    report.files = _delete_folder(tenant_folder(places.documents_dir, tenant, places.default_tenant))
    report.staged_files = _delete_staged(places.staging_dir, partition_keys)
    report.vectors = _delete_vectors(places.open_store, tenant)
    report.catalog_rows, report.disabled_chunks = _delete_catalog_rows(places.catalog, tenant)
    try:
        report.cache_entries = places.cache.delete_prefix(tenant_prefix(tenant))
        report.rate_limit_windows = places.limiter.forget([f"key:{key_id}" for key_id in key_ids])
    except RedisError as error:
        raise PurgeIncomplete(
            f"Redis did not answer ({error}) while tenant {tenant}'s cache entries were deleted — its keys, files, "
            "catalog rows and vectors are gone and its record is kept: run the deletion again once Redis answers"
        ) from error
    report.conversations, report.conversation_turns = _delete_conversations(places.database.engine, tenant)
    report.experiment_exclusions = _drop_exclusions(places.database.engine, tenant)
    deleted = places.database.delete_tenant_records(tenant)
    report.queries, report.feedback = deleted["queries"], deleted["feedback"]
    report.api_keys += deleted["api_keys"]  # a key created while the purge ran
    log.info("purged tenant %s: %s", tenant, report.counts())
    return report


def check_deletable(tenant: str, default_tenant: str, database: ServingDatabase) -> None:
    """Raises Refusal for the default tenant and UnknownTenant for a tenant the database does not know."""
    validate_tenant(tenant)
    if tenant == default_tenant:
        raise Refusal(
            f"{tenant} is the default tenant (RAG_DEFAULT_TENANT): its documents are the documents folder itself — "
            "delete them there, or revoke its keys"
        )
    if database.tenant(tenant) is None:
        raise UnknownTenant(f"no tenant {tenant} — `rag tenant list` shows the tenants")


def _catalog_keys(catalog: Catalog, tenant: str) -> list[str]:
    with catalog.engine.connect() as connection:
        query = sa.select(source_partitions.c.partition_key).where(source_partitions.c.tenant == tenant)
        return list(connection.execute(query).scalars())


def _delete_folder(folder: Path) -> int:
    if not folder.is_dir():
        return 0
    files = sum(1 for path in folder.rglob("*") if path.is_file() or path.is_symlink())
    shutil.rmtree(folder)
    return files


def _delete_staged(staging_dir: Path, partition_keys: list[str]) -> int:
    """The staged outputs of the tenant's partitions (rag_assets' PartitionedPickleIOManager writes
    `<staging_dir>/<asset>/<partition key>.pkl`): parsed text and chunks that outlive the index run."""
    if not partition_keys or not staging_dir.is_dir():
        return 0
    wanted = {f"{key}.pkl" for key in partition_keys}
    removed = 0
    for path in staging_dir.rglob("*.pkl"):
        if path.name in wanted and path.is_file():
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def _delete_vectors(open_store: Callable[[], AbstractContextManager[MilvusStore]], tenant: str) -> dict[str, int]:
    """The tenant's rows in every build of the alias, deleted by chunk id (the search log records them)."""
    deleted = {}
    expression = f"tenant == {milvus_string(tenant)}"
    with open_store() as store:
        for collection in store.list_collections():
            chunk_ids = [row["chunk_id"] for row in store.rows_where(collection, expression, ["chunk_id"])]
            if chunk_ids:
                store.delete_chunks(collection, chunk_ids)
            deleted[collection] = len(chunk_ids)
    return deleted


def _delete_catalog_rows(catalog: Catalog, tenant: str) -> tuple[int, int]:
    with catalog.engine.begin() as connection:
        rows = connection.execute(source_partitions.delete().where(source_partitions.c.tenant == tenant)).rowcount
        disabled = connection.execute(disabled_chunks.delete().where(disabled_chunks.c.tenant == tenant)).rowcount
    return rows, disabled


def _delete_conversations(engine: sa.Engine, tenant: str) -> tuple[int, int]:
    ConversationStore(engine)  # creates the tables in a database that never had a conversation
    its_conversations = sa.select(conversations.c.conversation_id).where(conversations.c.tenant == tenant)
    with engine.begin() as connection:
        said = connection.execute(turns.delete().where(turns.c.conversation_id.in_(its_conversations))).rowcount
        held = connection.execute(conversations.delete().where(conversations.c.tenant == tenant)).rowcount
    return held, said


def _drop_exclusions(engine: sa.Engine, tenant: str) -> int:
    """Take the tenant's name out of experiments' excluded tenants: a tenant created later under the same
    name is a new one, and nothing of the deleted one should steer its traffic."""
    ExperimentStore(engine)
    changed = 0
    with engine.begin() as connection:
        rows = connection.execute(sa.select(experiments.c.experiment_id, experiments.c.excluded_tenants)).all()
        for experiment_id, excluded in rows:
            names = json.loads(excluded)
            if tenant in names:
                kept = json.dumps([name for name in names if name != tenant])
                this_one = experiments.c.experiment_id == experiment_id
                connection.execute(experiments.update().where(this_one).values(excluded_tenants=kept))
                changed += 1
    return changed
