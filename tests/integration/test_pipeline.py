"""The asset graph end to end: real Dagster materializations into a real Milvus Lite file."""

import json
import shutil
from pathlib import Path

import pytest
from dagster import AssetKey, AssetRecordsFilter, SkipReason, instance_for_test

from rag_assets.cli import index, status
from rag_assets.resources import build_resources
from rag_core.catalog import INDEXED, QUARANTINED
from rag_core.ids import source_key
from tests.integration.pipeline_helpers import apply_sensor_result, search, sensor_tick, served_rows

pytestmark = pytest.mark.slow
FIXTURES = Path(__file__).parents[1] / "fixtures"


@pytest.fixture
def instance(settings):
    settings.resolved_dagster_home.mkdir(parents=True)
    with instance_for_test(temp_dir=str(settings.resolved_dagster_home)) as instance:
        yield instance


def _catalog(settings):
    return build_resources(settings)["catalog"].get().entries()


def _partition_metadata(instance, asset: str, relative_path: str) -> dict:
    """What the asset recorded for one source file at its latest materialization."""
    (record,) = instance.fetch_materializations(
        AssetRecordsFilter(asset_key=AssetKey(asset), asset_partitions=[source_key(relative_path)]), limit=1
    ).records
    return {key: value.value for key, value in record.asset_materialization.metadata.items()}


def test_full_build_indexes_everything_and_search_finds_documents(settings, instance):
    summary = index(settings, instance=instance)
    assert summary["partitions"] == 6 and summary["documents"] == 17 and summary["quarantined"] == 0
    rows = served_rows(settings)
    assert sum(len(ids) for ids in rows.values()) == summary["chunks"]
    # Beside them, one whole-text entry per document for BM25 (rag_core.chunking), with its first chunk's vector.
    with_entries = served_rows(settings, entries=True)
    assert sum(len(ids) for ids in with_entries.values()) == summary["chunks"] + summary["documents"]
    assert summary["vectors"] == summary["chunks"] + summary["documents"]
    entries = _catalog(settings)
    assert sum(entry.chunks for entry in entries.values()) == summary["chunks"]
    assert {entry.status for entry in entries.values()} == {INDEXED}

    hits = search(settings, "what happens to the vectors when a file is deleted from the watched folder?")
    assert hits[0].fields["source"] == "getting-started.md"
    for example in json.loads((FIXTURES / "train_queries.json").read_text())[:3]:
        assert example["doc_id"] in [hit.fields["doc_id"] for hit in search(settings, example["query"], 3)]

    report = status(settings)
    assert report["rows"] == summary["chunks"] and report["embedding_version"].startswith("all-MiniLM-L6-v2@")
    # the Dagster UI tells the story: metadata on every asset
    materialization = instance.get_latest_materialization_event(AssetKey("milvus_collection")).asset_materialization
    assert materialization.metadata["run_rows_inserted"].value == summary["vectors"]
    assert materialization.metadata["alias"].value.startswith("rag_chunks → rag_chunks__all_minilm_l6_v2_")


def test_rebuilding_unchanged_input_changes_nothing(settings, instance):
    first = index(settings, instance=instance)
    before = served_rows(settings)
    second = index(settings, instance=instance)
    assert second["embedded"] == 0  # every vector from the embedding cache
    assert served_rows(settings) == before
    assert second["vectors"] == first["vectors"]
    assert isinstance(sensor_tick(settings, instance), SkipReason)  # unchanged → no run requested


def test_sensor_reindexes_only_the_changed_file_and_replaces_its_chunks(settings, instance):
    index(settings, instance=instance)
    markdown = settings.documents_dir / "getting-started.md"
    key = source_key("getting-started.md")
    old_ids = served_rows(settings)[key]
    markdown.write_text(markdown.read_text().replace("thirty seconds", "ten minutes") + "\nZebras index quickly.\n")

    result = sensor_tick(settings, instance)
    assert [request.partition_key for request in result.run_requests] == [key]
    assert result.run_requests[0].run_key.startswith(f"{key}:")
    apply_sensor_result(settings, instance, result)

    new_ids = served_rows(settings)[key]
    assert old_ids - new_ids, "the edited chunks' old rows must be gone from Milvus"
    assert len(new_ids) == _catalog(settings)[key].chunks  # replaced, not duplicated
    assert len(served_rows(settings, entries=True)[key]) == len(new_ids) + 1  # and its one document entry
    assert any("Zebras" in hit.fields["text"] for hit in search(settings, "zebras index quickly", 3))
    assert isinstance(sensor_tick(settings, instance), SkipReason)  # the same change is not requested again

    # a revert to the earlier content is a change too (new generation in the run key)
    markdown.write_text((FIXTURES / "corpus" / "getting-started.md").read_text())
    reverted = sensor_tick(settings, instance)
    assert [request.partition_key for request in reverted.run_requests] == [key]
    apply_sensor_result(settings, instance, reverted)
    assert served_rows(settings)[key] == old_ids


def test_deleted_file_loses_its_vectors_and_a_new_file_appears(settings, instance):
    index(settings, instance=instance)
    key = source_key("milvus-lite-notes.html")
    assert key in served_rows(settings)

    (settings.documents_dir / "milvus-lite-notes.html").unlink()
    (settings.documents_dir / "tenant=acme").mkdir()
    shutil.copy(FIXTURES / "corpus" / "release-notes.txt", settings.documents_dir / "tenant=acme" / "notes.txt")
    result = sensor_tick(settings, instance)
    by_job = {request.job_name or "index_documents_job": request for request in result.run_requests}
    assert by_job["remove_documents_job"].run_config["ops"]["remove_documents"]["config"]["partition_keys"] == [key]
    new_key = source_key("tenant=acme/notes.txt")
    assert by_job["index_documents_job"].partition_key == new_key
    apply_sensor_result(settings, instance, result)

    rows = served_rows(settings)
    assert key not in rows  # no orphans
    assert new_key in rows
    assert key not in instance.get_dynamic_partitions("documents")
    assert key not in _catalog(settings)
    acme_hits = search(settings, "release notes embedding cache", 10)
    assert {hit.fields["tenant"] for hit in acme_hits if hit.fields["source_key"] == new_key} == {"acme"}


def test_corrupt_files_are_quarantined_while_the_rest_index(settings, instance):
    documents = settings.documents_dir
    (documents / "scan.pdf").write_bytes(b"%PDF-1.4\n" + bytes(range(256)) * 8)
    (documents / "broken.docx").write_bytes(b"PK\x03\x04 not a zip")
    (documents / "binary.txt").write_bytes(b"\x00\x01\x02 binary")
    (documents / "empty.md").write_text("")
    (documents / "latin1.txt").write_bytes("crème brûlée".encode("latin-1"))
    (documents / "dangling.html").symlink_to(documents / "nowhere.html")
    summary = index(settings, instance=instance)
    assert summary["quarantined"] == 6 and summary["documents"] == 17

    entries = _catalog(settings)
    quarantined = {entry.source: entry.quarantined[0] for entry in entries.values() if entry.status == QUARANTINED}
    assert set(quarantined) == {"scan.pdf", "broken.docx", "binary.txt", "empty.md", "latin1.txt", "dangling.html"}
    assert "UTF-8" in quarantined["latin1.txt"] and "empty" in quarantined["empty.md"]
    assert set(served_rows(settings)) == {key for key, entry in entries.items() if entry.status == INDEXED}
    assert "binary content" in _partition_metadata(instance, "raw_documents", "binary.txt")["quarantine_reasons"]
    # quarantined files are not re-requested until they change
    assert isinstance(sensor_tick(settings, instance), SkipReason)


def test_pii_is_redacted_before_chunks_are_embedded_or_stored(settings, instance):
    (settings.documents_dir / "contacts.md").write_text(
        "# Contacts\n\nReach Jane at jane.doe@example.com or +1 415-555-2671. Her SSN is 078-05-1121."
    )
    index(settings.model_copy(update={"redact_pii": True}), instance=instance)
    [hit] = [hit for hit in search(settings, "how to reach Jane contacts", 10) if hit.fields["source"] == "contacts.md"]
    assert "jane.doe@example.com" not in hit.fields["text"] and "[REDACTED_EMAIL]" in hit.fields["text"]
    assert "[REDACTED_PHONE]" in hit.fields["text"] and "[REDACTED_NATIONAL_ID]" in hit.fields["text"]
    redactions = _partition_metadata(instance, "raw_documents", "contacts.md")["pii_redactions"]
    assert redactions == {"email": 1, "phone": 1, "national_id": 1}


def test_a_bulk_drop_is_one_batched_run(settings, instance):
    index(settings, instance=instance)
    bulk = settings.documents_dir / "bulk"
    bulk.mkdir()
    for number in range(6):
        (bulk / f"note-{number}.md").write_text(f"# Note {number}\n\nBulk note number {number} about topic {number}.")
    settings = settings.model_copy(update={"sensor_batch_threshold": 3})
    result = sensor_tick(settings, instance)
    [run_request] = result.run_requests
    assert run_request.partition_key is None and run_request.run_key.startswith("batch:")
    assert run_request.tags["dagster/asset_partition_range_start"] == source_key("bulk/note-0.md")
    assert run_request.tags["dagster/asset_partition_range_end"] == source_key("bulk/note-5.md")
    apply_sensor_result(settings, instance, result)
    rows = served_rows(settings)
    assert all(source_key(f"bulk/note-{number}.md") in rows for number in range(6))
    assert isinstance(sensor_tick(settings, instance), SkipReason)


def test_code_location_loads_from_workspace_yaml(settings, tmp_path):
    """What `dagster dev -w workspace.yaml` loads: the definitions validate through Dagster's own CLI."""
    import os
    import subprocess
    import sys

    repo = Path(__file__).parents[2]
    environment = {**os.environ, "DAGSTER_HOME": str(tmp_path), "RAG_DATA_DIR": str(tmp_path / "data")}
    result = subprocess.run(
        [Path(sys.executable).parent / "dagster", "definitions", "validate", "-w", "workspace.yaml"],
        cwd=repo,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "Validation successful" in result.stdout + result.stderr
