"""The document catalog: what each source partition looked like when it was last indexed.

The sensor compares the watched folder with it to find new, changed and deleted files; the nightly
reconcile compares it with Milvus; the serving API reads document status from it. SQLAlchemy Core:
SQLite under the data dir by default, PostgreSQL in production (`RAG_CATALOG_URL`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa

from rag_core.tables import create_tables

metadata = sa.MetaData()
source_partitions = sa.Table(
    "rag_source_partitions",
    metadata,
    sa.Column("partition_key", sa.String(256), primary_key=True),
    sa.Column("source", sa.String(2048), nullable=False),
    sa.Column("tenant", sa.String(128), nullable=False),
    sa.Column("content_hash", sa.String(64), nullable=False),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("documents", sa.Integer, nullable=False, default=0),
    sa.Column("chunks", sa.Integer, nullable=False, default=0),
    sa.Column("quarantined", sa.Text, nullable=False, default="[]"),
    sa.Column("collection", sa.String(256), nullable=False, default=""),
    sa.Column("embedding_version", sa.String(256), nullable=False, default=""),
    sa.Column("generation", sa.Integer, nullable=False, default=0),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

# Chunks an operator disabled: kept in the index, excluded from retrieval. Keyed by the deterministic chunk id
# (tenant + source + doc id + position + content hash), so re-indexing unchanged content keeps them disabled
# and a changed passage (a new id) comes back enabled.
disabled_chunks = sa.Table(
    "rag_disabled_chunks",
    metadata,
    sa.Column("tenant", sa.String(128), primary_key=True),
    sa.Column("chunk_id", sa.String(256), primary_key=True),
    sa.Column("partition_key", sa.String(256), nullable=False, index=True),
    sa.Column("disabled_at", sa.DateTime(timezone=True), nullable=False),
)

INDEXED = "indexed"
QUARANTINED = "quarantined"
STALE = "stale"  # reconcile found drift; the sensor re-indexes it
PENDING = "pending"  # never indexed; reconcile requested it again after its run was lost or failed


@dataclass
class CatalogEntry:
    partition_key: str
    source: str
    tenant: str
    content_hash: str
    status: str
    documents: int = 0
    chunks: int = 0
    quarantined: list[str] = field(default_factory=list)
    collection: str = ""
    embedding_version: str = ""
    generation: int = 0
    updated_at: datetime | None = None


class Catalog:
    def __init__(self, url: str) -> None:
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        self.engine = sa.create_engine(url, pool_pre_ping=True)
        create_tables(metadata, self.engine)

    def entries(self, keys: Sequence[str] | None = None) -> dict[str, CatalogEntry]:
        query = sa.select(source_partitions)
        if keys is not None:
            query = query.where(source_partitions.c.partition_key.in_(list(keys)))
        with self.engine.connect() as connection:
            rows = connection.execute(query).mappings().all()
        return {
            row["partition_key"]: CatalogEntry(**{**row, "quarantined": json.loads(row["quarantined"])}) for row in rows
        }

    def record(self, entries: Iterable[CatalogEntry]) -> None:
        """Upsert entries; each write bumps the generation so a reverted file gets a fresh run key."""
        entries = list(entries)
        previous = self.entries([entry.partition_key for entry in entries])
        now = datetime.now(UTC)
        with self.engine.begin() as connection:
            for entry in entries:
                values = {
                    **entry.__dict__,
                    "quarantined": json.dumps(entry.quarantined),
                    "generation": previous[entry.partition_key].generation + 1
                    if entry.partition_key in previous
                    else 1,
                    "updated_at": now,
                }
                connection.execute(
                    source_partitions.delete().where(source_partitions.c.partition_key == entry.partition_key)
                )
                connection.execute(source_partitions.insert().values(**values))

    def mark_stale(self, keys: Sequence[str]) -> None:
        with self.engine.begin() as connection:
            connection.execute(
                source_partitions.update()
                .where(source_partitions.c.partition_key.in_(list(keys)))
                .values(status=STALE, content_hash="", updated_at=datetime.now(UTC))
            )

    def request_again(self, stubs: Iterable[CatalogEntry]) -> None:
        """A fresh run key for each of these partitions: the sensor keys a change by the catalog generation,
        so bumping it makes the next tick request a run even though the last one's key was used. An entry
        keeps what it records (its indexed version is still served); a file never indexed gets its stub,
        status `pending`."""
        stubs = {stub.partition_key: stub for stub in stubs}
        previous = self.entries(list(stubs))
        with self.engine.begin() as connection:
            for key, stub in stubs.items():
                if key in previous:
                    connection.execute(
                        source_partitions.update()
                        .where(source_partitions.c.partition_key == key)
                        .values(generation=previous[key].generation + 1)
                    )
                    continue
                values = {**stub.__dict__, "status": PENDING, "content_hash": "", "quarantined": "[]", "generation": 1}
                connection.execute(source_partitions.insert().values({**values, "updated_at": datetime.now(UTC)}))

    def remove(self, keys: Sequence[str]) -> None:
        with self.engine.begin() as connection:
            connection.execute(source_partitions.delete().where(source_partitions.c.partition_key.in_(list(keys))))

    def set_chunk_enabled(self, tenant: str, partition_key: str, chunk_id: str, enabled: bool) -> None:
        key = (disabled_chunks.c.tenant == tenant) & (disabled_chunks.c.chunk_id == chunk_id)
        with self.engine.begin() as connection:
            connection.execute(disabled_chunks.delete().where(key))
            if not enabled:
                connection.execute(
                    disabled_chunks.insert().values(
                        tenant=tenant, chunk_id=chunk_id, partition_key=partition_key, disabled_at=datetime.now(UTC)
                    )
                )

    def disabled_chunks(self) -> dict[str, frozenset[str]]:
        """{tenant: its disabled chunk ids}: what every search excludes."""
        with self.engine.connect() as connection:
            rows = connection.execute(sa.select(disabled_chunks.c.tenant, disabled_chunks.c.chunk_id)).all()
        found: dict[str, set[str]] = {}
        for tenant, chunk_id in rows:
            found.setdefault(tenant, set()).add(chunk_id)
        return {tenant: frozenset(ids) for tenant, ids in found.items()}

    def retarget(self, collection: str, embedding_version: str, rows_by_source: dict[str, int]) -> int:
        """After a one-pass build is promoted: indexed entries now live in `collection` with its counts."""
        with self.engine.begin() as connection:
            updated = 0
            for key, entry in self.entries().items():
                if entry.status != INDEXED:
                    continue
                connection.execute(
                    source_partitions.update()
                    .where(source_partitions.c.partition_key == key)
                    .values(
                        collection=collection,
                        embedding_version=embedding_version,
                        chunks=rows_by_source.get(key, 0),
                        updated_at=datetime.now(UTC),
                    )
                )
                updated += 1
        return updated
