"""Hostile and broken sources through `rag index`: one tenant can never take, delete or shadow another's rows,
and no bad file (an over-long id, a run without spaces, a decompression bomb, a link out of the folder) can
fail the run for the others."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from dagster import instance_for_test

from rag_assets.cli import index
from rag_assets.resources import build_resources
from rag_core.catalog import INDEXED, QUARANTINED
from rag_core.search.engines import IndexConnection
from rag_core.search.filters import SearchFilter
from rag_core.settings import Settings
from tests.integration.pipeline_helpers import served_rows
from tests.support.settings import embedded_settings

pytestmark = pytest.mark.slow
SHARED_RECORD = {"_id": "claim-42", "title": "Vitamin D", "text": "Vitamin D supplements reduce fractures in the old."}


def _write_corpus(documents: Path) -> None:
    documents.mkdir()
    (documents / "corpus.jsonl").write_text(
        json.dumps(SHARED_RECORD) + "\n" + json.dumps({"_id": "claim-7", "text": "Aspirin thins the blood."}) + "\n"
    )
    # tenant acme uploads a copy of the default tenant's record: the same `_id` and the same text
    (documents / "tenant=acme").mkdir()
    (documents / "tenant=acme" / "copied.jsonl").write_text(json.dumps(SHARED_RECORD) + "\n")
    (documents / "tenant=acme" / "long-id.jsonl").write_text(
        json.dumps({"_id": "i" * 600, "text": "an id over the 512-byte column"})
        + "\n"
        + json.dumps({"_id": "acme-ok", "text": "Acme's own note about widgets."})
        + "\n"
    )
    (documents / "run.md").write_text("# A run\n\n" + "x" * 70_000 + "\n\nAnd a sentence after it.")
    with gzip.open(documents / "bomb.jsonl.gz", "wb") as handle:
        for _ in range(30_000):
            handle.write(json.dumps({"_id": "b", "text": "a" * 1000}).encode() + b"\n")
    (documents / "passwd.txt").symlink_to("/etc/passwd")


def _doc_ids(settings: Settings, tenant: str, doc_id: str) -> list[tuple[str, str]]:
    """(doc id, tenant) of what a tenant's filtered retrieval returns, through the served search engine."""
    searcher = IndexConnection.from_settings(settings).memory_engine().served().searcher
    search_filter = SearchFilter.parse({"doc_id": doc_id}, tenant).reading("chunks")
    hits = searcher.search_bm25("vitamin fractures", 10, search_filter)
    return [(hit.fields["doc_id"], hit.fields["tenant"]) for hit in hits]


def test_bad_and_hostile_sources_never_fail_the_run_or_touch_another_tenant(tmp_path):
    documents = tmp_path / "documents"
    _write_corpus(documents)
    settings = embedded_settings(tmp_path, documents, max_expanded_mb=20)
    settings.resolved_dagster_home.mkdir(parents=True)
    with instance_for_test(temp_dir=str(settings.resolved_dagster_home)) as instance:
        first = index(settings, instance=instance)
        assert first["documents"] == 5  # claim-42, claim-7, acme's copy of claim-42, acme-ok and the run
        rows = served_rows(settings)
        entries = build_resources(settings)["catalog"].get().entries()
        by_source = {entry.source: entry for entry in entries.values()}

        # both tenants keep their own copy of claim-42: two rows, each tenant retrieves its own
        assert _doc_ids(settings, "default", "claim-42") == [("claim-42", "default")]
        assert _doc_ids(settings, "acme", "claim-42") == [("claim-42", "acme")]
        # Milvus holds exactly what the catalog says it indexed
        assert sum(len(ids) for ids in rows.values()) == sum(e.chunks for e in entries.values() if e.status == INDEXED)

        # each bad input is quarantined with its reason; the rest of its file is indexed
        assert "limit is 512" in by_source["tenant=acme/long-id.jsonl"].quarantined[0]
        assert by_source["tenant=acme/long-id.jsonl"].status == INDEXED
        assert by_source["bomb.jsonl.gz"].status == QUARANTINED
        assert "decompression bomb" in by_source["bomb.jsonl.gz"].quarantined[0]
        assert by_source["passwd.txt"].status == QUARANTINED
        assert "outside the documents folder" in by_source["passwd.txt"].quarantined[0]
        assert by_source["run.md"].status == INDEXED and by_source["run.md"].chunks >= 9  # the run, split

        # a full rebuild moves nothing back and forth
        index(settings, instance=instance)
        assert served_rows(settings) == rows
        assert _doc_ids(settings, "default", "claim-42") == [("claim-42", "default")]
