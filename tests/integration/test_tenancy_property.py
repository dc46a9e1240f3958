"""Tenancy as a property: random interleavings of two tenants' uploads, deletes and reindexes, where the
tenants reuse each other's `_id`s and texts on purpose. After every reindex, each tenant retrieves exactly
its own current documents — never one of the other tenant's, never a stale one."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from dagster import instance_for_test

from rag_assets.cli import index
from rag_core.search.engines import IndexConnection
from rag_core.search.filters import SearchFilter
from rag_core.settings import Settings

pytestmark = pytest.mark.slow
TENANTS = ("default", "acme")
SHARED_IDS = [f"doc-{n}" for n in range(4)]  # both tenants draw ids (and texts) from the same pool


def _folder(documents: Path, tenant: str) -> Path:
    return documents if tenant == "default" else documents / f"tenant={tenant}"


def _retrieved(settings: Settings, tenant: str) -> set[tuple[str, str]]:
    searcher = IndexConnection.from_settings(settings).memory_engine().served().searcher
    hits = searcher.search_bm25("shared corpus sentence", 1000, SearchFilter(tenant))
    assert all(hit.fields["tenant"] == tenant for hit in hits)
    return {(hit.fields["source"], hit.fields["doc_id"]) for hit in hits}


@pytest.mark.parametrize("seed", [3, 11])
def test_each_tenant_always_retrieves_exactly_its_own_current_documents(tmp_path, seed):
    rng = random.Random(seed)
    documents = tmp_path / "documents"
    for tenant in TENANTS:
        _folder(documents, tenant).mkdir(parents=True)
    settings = Settings(
        data_dir=tmp_path / "data", documents_dir=documents, dagster_home=tmp_path / "dagster", milvus_uri=""
    )
    settings.resolved_dagster_home.mkdir(parents=True)
    expected: dict[str, dict[str, set[str]]] = {tenant: {} for tenant in TENANTS}  # tenant → file → doc ids
    with instance_for_test(temp_dir=str(settings.resolved_dagster_home)) as instance:
        reindexes = 0
        for step in range(15):
            tenant = rng.choice(TENANTS)
            files = expected[tenant]
            action = "reindex" if step % 3 == 2 else rng.choice(["upload", "upload", "delete"])
            if action == "delete" and files:
                name = rng.choice(sorted(files))
                (_folder(documents, tenant) / name).unlink()
                del files[name]
            elif action in ("upload", "delete"):  # a new file or a new version of one
                name = f"part-{rng.randrange(3)}.jsonl"
                ids = set(rng.sample(SHARED_IDS, rng.randint(1, 3)))
                version = rng.randrange(2)  # two versions in all: the tenants often write identical records
                records = [
                    {"_id": doc_id, "text": f"A shared corpus sentence about {doc_id} (version {version})."}
                    for doc_id in sorted(ids)
                ]
                (_folder(documents, tenant) / name).write_text("".join(json.dumps(r) + "\n" for r in records))
                files[name] = ids
            if (action == "reindex" or step == 14) and any(expected.values()):  # `rag index` refuses an empty folder
                index(settings, instance=instance)
                reindexes += 1
                for who in TENANTS:
                    prefix = "" if who == "default" else f"tenant={who}/"
                    wanted = {(prefix + name, doc_id) for name, ids in expected[who].items() for doc_id in ids}
                    assert _retrieved(settings, who) == wanted, (seed, step, who)
        assert reindexes >= 2
