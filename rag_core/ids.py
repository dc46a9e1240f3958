"""Deterministic identifiers: the same input always yields the same ids, so reindexing changes nothing."""

from __future__ import annotations

import hashlib
import re

_SLUG_UNSAFE = re.compile(r"[^a-z0-9]+")


def content_hash(data: str | bytes, length: int = 16) -> str:
    raw = data.encode("utf-8") if isinstance(data, str) else data
    return hashlib.sha256(raw).hexdigest()[:length]


def source_key(relative_path: str) -> str:
    """A readable, stable Dagster partition key for a file: slug of its path plus a short path hash."""
    slug = _SLUG_UNSAFE.sub("-", relative_path.lower()).strip("-")[:80] or "file"
    return f"{slug}-{content_hash(relative_path, 8)}"


def shard_key(file_key: str, shard: int, shard_count: int) -> str:
    return f"{file_key}~{shard + 1}of{shard_count}"


def chunk_id(tenant: str, source: str, doc_id: str, position: int, text: str) -> str:
    """The primary key: a hash of (tenant, source file) + doc id + position + content hash.

    The uploader chooses a record's `_id`, so the doc id alone must never decide the key: two tenants (or two
    files) holding the same `_id` and text get different rows, and no write of one can replace the other's.
    """
    scope = content_hash(f"{tenant}\x1f{source}", 16)
    return f"{scope}/{_readable_prefix(doc_id)}#{position}:{content_hash(text, 12)}"


def _readable_prefix(doc_id: str) -> str:
    """The doc id itself when short, else its start and a hash: at most 64 UTF-8 bytes (Milvus counts bytes)."""
    if len(doc_id.encode("utf-8")) <= 64:
        return doc_id
    head = doc_id.encode("utf-8")[:48].decode("utf-8", errors="ignore")
    return f"{head}-{content_hash(doc_id, 12)}"
