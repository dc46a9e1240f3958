"""The Milvus store against a real Milvus Lite file."""

import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from rag_core.indexing import sync_partitions
from rag_core.store import IndexBuild, MilvusStore, MilvusUnavailable, milvus_client

BUILD = IndexBuild("test-model", "test-model@abc123", 4, "tokens64-overlap8")


def _row(chunk_id: str, source_key: str, text: str, vector, tenant: str = "default") -> dict:
    return {
        "chunk_id": chunk_id,
        "doc_id": chunk_id.split("#")[0],
        "source_key": source_key,
        "tenant": tenant,
        "source": f"{source_key}.md",
        "title": "t",
        "text": text,
        "search_text": text,
        "position": 0,
        "start_char": 0,
        "end_char": len(text),
        "dense": list(vector),
        "metadata": {},
    }


@pytest.fixture
def uri(tmp_path):
    return str(tmp_path / "milvus.db")


def test_collection_schema_alias_and_properties(uri):
    with milvus_client(uri) as client:
        store = MilvusStore(client, "idx")
        name = store.ensure_collection(BUILD)
        assert name == store.ensure_collection(BUILD)  # idempotent
        assert store.alias_target() is None
        store.point_alias(name)
        assert store.alias_target() == name
        properties = store.collection_properties(name)
        assert properties["rag.embedding_version"] == "test-model@abc123"
        assert properties["rag.chunking"] == "tokens64-overlap8"
        fields = {f["name"]: f for f in client.describe_collection(name)["fields"]}
        assert fields["tenant"].get("is_partition_key") is True
        assert fields["sparse"].get("is_function_output") is True


def test_sync_replaces_changed_rows_and_keeps_unchanged(uri):
    with milvus_client(uri) as client:
        store = MilvusStore(client, "idx")
        name = store.ensure_collection(BUILD)
        rows = {
            "a": [_row("a#0:1", "a", "cats purr", [1, 0, 0, 0]), _row("a#1:1", "a", "dogs bark", [0, 1, 0, 0])],
            "b": [_row("b#0:1", "b", "birds sing", [0, 0, 1, 0])],
        }
        first = sync_partitions(store, name, rows)
        assert (first.inserted, first.deleted, first.unchanged) == (3, 0, 0)
        again = sync_partitions(store, name, rows)
        assert (again.inserted, again.deleted, again.unchanged) == (0, 0, 3)
        rows["a"] = [rows["a"][0], _row("a#1:2", "a", "wolves howl", [0, 1, 1, 0])]
        changed = sync_partitions(store, name, {"a": rows["a"]})
        assert (changed.inserted, changed.deleted, changed.unchanged) == (1, 1, 1)
        assert store.chunk_ids_by_source(name, ["a", "b"]) == {"a": {"a#0:1", "a#1:2"}, "b": {"b#0:1"}}
        assert store.count(name) == 3
        [hit] = store.search_bm25(name, "wolves", 1)
        assert hit.chunk_id == "a#1:2"
        [hit] = store.search_dense(name, np.array([0, 0, 1, 0.1]), 1)
        assert hit.fields["doc_id"] == "b"
        assert store.delete_sources(name, ["a"]) == 2
        assert dict(store.rows_by_source(name)) == {"b": 1}


def test_tenant_filter_isolates_rows(uri):
    with milvus_client(uri) as client:
        store = MilvusStore(client, "idx")
        name = store.ensure_collection(BUILD)
        store.upsert(
            name,
            [
                _row("x#0:1", "x", "shared words", [1, 0, 0, 0], tenant="acme"),
                _row("y#0:1", "y", "shared words", [1, 0, 0, 0], tenant="globex"),
            ],
        )
        hits = store.search_bm25(name, "shared", 10, 'tenant == "acme"')
        assert [hit.fields["tenant"] for hit in hits] == ["acme"]


def test_lite_file_is_released_for_other_processes(uri):
    with milvus_client(uri) as client:
        MilvusStore(client, "idx").ensure_collection(BUILD)
    script = textwrap.dedent(f"""
        from rag_core.store import milvus_client, MilvusStore
        with milvus_client({uri!r}, lock_timeout_s=5) as client:
            from tests.integration.test_store import BUILD
            print(client.has_collection(MilvusStore(client, "idx").collection_for(BUILD)))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "True", result.stderr[-2000:]


def test_a_locked_lite_file_times_out_with_the_fix(uri, caplog):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"from pymilvus import MilvusClient; import time; MilvusClient({uri!r}); "
            "print('ready', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "ready"
        with pytest.raises(MilvusUnavailable, match="milvus-lite server"), milvus_client(uri, lock_timeout_s=1):
            pass
        # the wait said what it waits for, with its countdown, before it gave up
        assert re.search(r"waiting for the Milvus Lite file .* \(another process holds it\) — \d+ s left", caplog.text)
    finally:
        holder.kill()
        holder.wait()


def test_unreachable_server_names_the_fix():
    with (
        pytest.raises(MilvusUnavailable, match="unset MILVUS_URI"),
        milvus_client("http://127.0.0.1:1", lock_timeout_s=1),
    ):
        pass
