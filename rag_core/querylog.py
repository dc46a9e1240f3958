"""The serving database (SQLAlchemy: SQLite by default, PostgreSQL in production): the query log,
user feedback and API keys. Keys are stored hashed; the plain key is shown once, when it is created."""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

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


@dataclass(frozen=True)
class ApiKey:
    key_id: str
    tenant: str
    name: str


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class ServingDatabase:
    def __init__(self, url: str) -> None:
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        self.engine = sa.create_engine(url, pool_pre_ping=True)
        metadata.create_all(self.engine)

    # ---- API keys
    def create_key(self, tenant: str, name: str = "") -> str:
        key_id = secrets.token_hex(6)
        plain = f"rag_{key_id}_{secrets.token_urlsafe(24)}"
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
        with self.engine.connect() as connection:
            row = connection.execute(sa.select(api_keys).where(api_keys.c.key_id == parts[1])).mappings().first()
        if row is None or row["revoked"] or not hmac.compare_digest(row["key_hash"], _hash(plain)):
            return None
        return ApiKey(row["key_id"], row["tenant"], row["name"])

    def revoke_key(self, key_id: str) -> bool:
        with self.engine.begin() as connection:
            result = connection.execute(api_keys.update().where(api_keys.c.key_id == key_id).values(revoked=True))
        return result.rowcount > 0

    # ---- query log
    def log_query(self, **values: Any) -> str:
        query_id = values.pop("query_id", None) or str(uuid.uuid4())
        values["chunk_ids"] = json.dumps(values.get("chunk_ids", []))
        values["timings_ms"] = json.dumps(values.get("timings_ms", {}))
        with self.engine.begin() as connection:
            connection.execute(queries.insert().values(query_id=query_id, created_at=datetime.now(UTC), **values))
        return query_id

    def query_exists(self, query_id: str, tenant: str | None = None) -> bool:
        condition = queries.c.query_id == query_id
        if tenant is not None:
            condition = condition & (queries.c.tenant == tenant)
        with self.engine.connect() as connection:
            return connection.execute(sa.select(queries.c.query_id).where(condition)).first() is not None

    # ---- feedback
    def add_feedback(self, query_id: str, rating: int | None, is_relevant: bool | None, comment: str) -> int:
        with self.engine.begin() as connection:
            result = connection.execute(
                feedback.insert().values(
                    query_id=query_id,
                    rating=rating,
                    is_relevant=is_relevant,
                    comment=comment,
                    created_at=datetime.now(UTC),
                )
            )
        return int(result.inserted_primary_key[0])

    def relevant_pairs(self) -> list[tuple[str, list[str]]]:
        """(question, retrieved chunk ids) of queries users marked relevant: training pairs for fine-tuning."""
        query = (
            sa.select(queries.c.question, queries.c.chunk_ids)
            .join(feedback, feedback.c.query_id == queries.c.query_id)
            .where(feedback.c.is_relevant.is_(True))
        )
        with self.engine.connect() as connection:
            return [(question, json.loads(ids)) for question, ids in connection.execute(query)]

    def analytics(self, tenant: str | None = None, worst: int = 10) -> dict[str, Any]:
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
