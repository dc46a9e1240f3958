"""The search log: what every write to a Milvus Lite collection changed, on disk beside the data, so
that in-memory search indexes follow the build without opening Milvus (whose Lite file one process at a
time may hold).

Milvus stays the system of record: `MilvusStore` writes Milvus first, then appends the same change here.
A reader loads the newest base snapshot of a collection and applies the changes after it, in order.

    <root>/aliases/<alias>.json                   {"collection": …}
    <root>/collections/<name>/properties.json     the collection's properties; "complete": logged since creation
    <root>/collections/<name>/changes/<seq>.arrow  rows upserted (with vectors) and chunk ids deleted
    <root>/collections/<name>/base/<seq>/          a snapshot of every live row up to change <seq>

Sequence numbers are allocated and files written under a per-collection file lock, so change <n + 1>
exists only once change <n> is complete. Files appear by atomic rename; readers never see half a file.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import scipy.sparse as sp

from rag_core.search import published
from rag_core.search.memory import MemoryIndex, Segment, graph_vectors, row_schema, rows_table

KEEP_REPLACED_CHANGES_S = 600  # a reader that fell further behind a new base than this reloads the base
KEEP_BASES = 2


@dataclass(frozen=True)
class Change:
    seq: int
    table: pa.Table | None
    vectors: np.ndarray | None
    deleted: list[str]


def _write_atomic(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    try:
        write(staging)
        os.replace(staging, path)
    finally:
        staging.unlink(missing_ok=True)


def _write_json(path: Path, value: dict) -> None:
    _write_atomic(path, lambda target: target.write_text(json.dumps(value, sort_keys=True)))


class SearchLog:
    def __init__(self, root: Path) -> None:
        self.root = root

    def _collection(self, name: str) -> Path:
        return published.collection_dir(self.root, name)

    @contextlib.contextmanager
    def _locked(self, name: str) -> Iterator[Path]:
        folder = self._collection(name)
        folder.mkdir(parents=True, exist_ok=True)
        with (folder / "LOCK").open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield folder
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    # ---- writers (MilvusStore, after the same write to Milvus)
    def created(self, name: str, properties: dict[str, str]) -> None:
        with self._locked(name) as folder:
            _write_json(folder / "properties.json", {"properties": properties, "complete": True})

    def set_properties(self, name: str, properties: dict[str, str]) -> None:
        with self._locked(name) as folder:
            current = published.read_json(folder / "properties.json") or {"properties": {}, "complete": False}
            current["properties"].update(properties)
            _write_json(folder / "properties.json", current)

    def upserted(self, name: str, rows: Sequence[dict]) -> None:
        if rows:
            table, vectors = rows_table(rows)
            self._append(name, table, vectors, [])

    def deleted(self, name: str, chunk_ids: Sequence[str]) -> None:
        if chunk_ids:
            self._append(name, None, None, list(chunk_ids))

    def replaced(self, name: str, rows: Sequence[dict], chunk_ids: Sequence[str]) -> None:
        """New rows and the ids they supersede as one change: a follower applies both or neither."""
        if rows:
            table, vectors = rows_table(rows)
            self._append(name, table, vectors, list(chunk_ids))
        elif chunk_ids:
            self._append(name, None, None, list(chunk_ids))

    def _append(self, name: str, table: pa.Table | None, vectors: np.ndarray | None, deleted: list[str]) -> None:
        with self._locked(name) as folder:
            seq = self._last_seq(folder) + 1
            path = folder / "changes" / f"{seq:012d}.arrow"
            _write_atomic(path, lambda target: _write_change(target, table, vectors, deleted))
            (folder / "SEQ").write_text(str(seq))

    def alias_moved(self, alias: str, collection: str) -> None:
        _write_json(published.alias_file(self.root, alias), {"collection": collection, "at": time.time()})

    def adopt_alias(self, alias: str, collection: str) -> None:
        """Record an alias read from Milvus, unless a writer recorded one meanwhile."""
        path = published.alias_file(self.root, alias)
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError), path.open("x") as handle:
            handle.write(json.dumps({"collection": collection, "at": time.time()}))

    def dropped(self, name: str) -> None:
        shutil.rmtree(self._collection(name), ignore_errors=True)

    # ---- readers
    def alias_target(self, alias: str) -> str | None:
        return published.alias_target(self.root, alias)

    def properties(self, name: str) -> tuple[dict[str, str], bool] | None:
        """(properties, whether the log holds every change since the collection was created)."""
        return published.properties(self.root, name)

    def last_seq(self, name: str) -> int:
        return self._last_seq(self._collection(name))

    @staticmethod
    def _last_seq(folder: Path) -> int:
        try:
            return int((folder / "SEQ").read_text() or 0)
        except FileNotFoundError:
            return 0

    def changes(self, name: str, after: int) -> list[Change] | None:
        """The changes after `after`, in order; None when some were compacted away (reload the base)."""
        if self.last_seq(name) <= after:  # what a follower's poll usually finds: one small read, no listing
            return []
        folder = self._collection(name) / "changes"
        seqs = sorted(int(path.stem) for path in folder.glob("[0-9]*.arrow")) if folder.exists() else []
        wanted = [seq for seq in seqs if seq > after]
        if wanted and wanted[0] != after + 1:
            return None
        return [_read_change(folder / f"{seq:012d}.arrow", seq) for seq in wanted]

    # ---- base snapshots
    def latest_base(self, name: str) -> tuple[int, Path] | None:
        folder = self._collection(name) / "base"
        bases = sorted(folder.glob("[0-9]*")) if folder.exists() else []
        return (int(bases[-1].name), bases[-1]) if bases else None

    def save_base(self, name: str, index: MemoryIndex) -> Path:
        """Write a compacted snapshot of `index`; changes it covers are dropped after a grace period."""
        folder = self._collection(name) / "base"
        target = folder / f"{index.seq:012d}"
        if target.exists():
            return target
        compact = index.compacted()
        staging = folder / f".{target.name}.{uuid.uuid4().hex[:8]}"
        try:
            _write_base(staging, compact)
            with self._locked(name):  # another process may have written the same snapshot meanwhile
                if not target.exists():
                    os.replace(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        for old in sorted(folder.glob("[0-9]*"))[:-KEEP_BASES]:
            shutil.rmtree(old, ignore_errors=True)
        cutoff = time.time() - KEEP_REPLACED_CHANGES_S
        for change in (self._collection(name) / "changes").glob("[0-9]*.arrow"):
            if int(change.stem) <= compact.seq and change.stat().st_mtime < cutoff:
                change.unlink(missing_ok=True)
        return target

    @staticmethod
    def describe_base(folder: Path) -> dict:
        """What a snapshot holds (rows, change seq, BM25 terms, whether it has an HNSW graph)."""
        return json.loads((folder / "meta.json").read_text())

    def load_base(self, name: str) -> MemoryIndex | None:
        latest = self.latest_base(name)
        return _read_base(latest[1], latest[0]) if latest else None


def _with_vectors(table: pa.Table, vectors: np.ndarray) -> pa.Table:
    flat = pa.array(np.ascontiguousarray(vectors, np.float32).ravel())
    return table.append_column("dense", pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1]))


def _split_vectors(table: pa.Table) -> tuple[pa.Table, np.ndarray]:
    dense = table.column("dense").combine_chunks()
    width = dense.type.list_size
    vectors = dense.flatten().to_numpy(zero_copy_only=False).reshape(-1, width)
    return table.drop_columns(["dense"]), np.asarray(vectors, np.float32)


def _write_change(target: Path, table: pa.Table | None, vectors: np.ndarray | None, deleted: list[str]) -> None:
    """One Arrow file: upserted rows (flag `deleted` false) and deleted ids (flag true, other fields null)."""
    width = vectors.shape[1] if table is not None and vectors is not None and vectors.size else 1
    parts, dense = [], []
    if table is not None and len(table):
        parts.append(table.append_column("deleted", pa.array([False] * len(table))))
        dense.append(vectors)
    if deleted:
        tombstones = pa.Table.from_pylist([{"chunk_id": chunk_id} for chunk_id in deleted], schema=row_schema())
        parts.append(tombstones.append_column("deleted", pa.array([True] * len(deleted))))
        dense.append(np.zeros((len(deleted), width), np.float32))
    combined = _with_vectors(pa.concat_tables(parts), np.concatenate(dense))
    with pa.OSFile(str(target), "wb") as sink, pa.ipc.new_file(sink, combined.schema) as writer:
        writer.write_table(combined)


def _read_change(path: Path, seq: int) -> Change:
    table = pa.ipc.open_file(pa.memory_map(str(path))).read_all()  # buffers keep the map alive
    deleted_mask = table.column("deleted").to_numpy(zero_copy_only=False)
    deleted = table.filter(pa.array(deleted_mask)).column("chunk_id").to_pylist()
    if deleted_mask.all():
        return Change(seq, None, None, deleted)
    upserted = table.filter(pa.array(~deleted_mask)) if deleted else table
    rows, vectors = _split_vectors(upserted.drop_columns(["deleted"]))
    return Change(seq, rows, vectors, deleted)


def _write_base(folder: Path, index: MemoryIndex) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    meta = {"seq": index.seq, "dimension": index.dimension, "rows": index.rows, "written_at": time.time()}
    if index.segments:
        (segment,) = index.segments
        meta |= {"terms": len(segment.vocabulary), "graph": segment.graph is not None}
        table = _with_vectors(segment.table, segment.vectors)
        with pa.OSFile(str(folder / "rows.arrow"), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)
        terms = sorted(segment.vocabulary, key=segment.vocabulary.__getitem__)
        np.savez(
            folder / "postings.npz",
            data=segment.postings.data,
            indices=segment.postings.indices,
            indptr=segment.postings.indptr,
            shape=np.asarray(segment.postings.shape),
            lengths=segment.lengths,
            vocabulary=np.asarray(terms, dtype=str),
        )
        if segment.graph is not None:
            faiss.write_index(segment.graph, str(folder / "graph.faiss"))
    (folder / "meta.json").write_text(json.dumps(meta))


def _read_base(folder: Path, seq: int) -> MemoryIndex:
    meta = json.loads((folder / "meta.json").read_text())
    if not (folder / "rows.arrow").exists():
        empty = pa.Table.from_pylist([], schema=row_schema())
        return MemoryIndex.build(empty, np.zeros((0, 0)), seq, meta["dimension"])
    graph = faiss.read_index(str(folder / "graph.faiss")) if (folder / "graph.faiss").exists() else None
    # Memory-mapped, and left open for as long as the table's buffers live: the texts stay in the page
    # cache, shared by every worker process that loads the same base.
    rows = pa.ipc.open_file(pa.memory_map(str(folder / "rows.arrow"))).read_all()
    if graph is not None:
        table, vectors = rows.drop_columns(["dense"]), graph_vectors(graph)
    else:
        table, vectors = _split_vectors(rows)
    stored = np.load(folder / "postings.npz")
    postings = sp.csc_matrix(
        (stored["data"], stored["indices"], stored["indptr"]), shape=tuple(int(n) for n in stored["shape"])
    )
    vocabulary = {term: column for column, term in enumerate(stored["vocabulary"].tolist())}
    segment = Segment(table, np.ascontiguousarray(vectors), vocabulary, postings, stored["lengths"], graph)
    return MemoryIndex.from_segment(segment.entries_last(), seq)
