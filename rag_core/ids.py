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


def chunk_id(doc_id: str, position: int, text: str) -> str:
    """doc id + position + content hash; bounded in length for the Milvus primary key."""
    prefix = doc_id if len(doc_id) <= 64 else f"{doc_id[:48]}-{content_hash(doc_id, 12)}"
    return f"{prefix}#{position}:{content_hash(text, 12)}"
