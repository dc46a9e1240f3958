"""Where the search log records what is published — the alias' target and each build's properties — read
with nothing but the standard library, so `rag status` answers without loading Milvus or an index."""

from __future__ import annotations

import json
from pathlib import Path


def is_lite_uri(uri: str) -> bool:
    """A Milvus Lite file (`….db`), as opposed to a server's `http://host:port`."""
    return uri.endswith(".db")


def alias_file(root: Path, alias: str) -> Path:
    return root / "aliases" / f"{alias}.json"


def collection_dir(root: Path, name: str) -> Path:
    return root / "collections" / name


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


def alias_target(root: Path, alias: str) -> str | None:
    recorded = read_json(alias_file(root, alias))
    return recorded["collection"] if recorded else None


def properties(root: Path, name: str) -> tuple[dict[str, str], bool] | None:
    """(properties, whether the log holds every change since the collection was created)."""
    recorded = read_json(collection_dir(root, name) / "properties.json")
    return (recorded["properties"], bool(recorded.get("complete"))) if recorded else None
