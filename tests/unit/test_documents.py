import gzip
import json
import zipfile
from pathlib import Path

import pytest

from rag_core.documents import (
    decode_text,
    discover_sources,
    jsonl_shard_count,
    normalise_text,
    parse_source,
    tenant_of,
)

FIXTURES = Path(__file__).parents[1] / "fixtures" / "corpus"


def _units(folder: Path, shard_size: int = 1000):
    return {
        unit.relative_path + (f"#{unit.shard}" if unit.shard is not None else ""): unit
        for unit in discover_sources(folder, "default", shard_size)
    }


def test_every_supported_format_parses_with_title_and_text():
    units = _units(FIXTURES)
    expected_titles = {
        "getting-started.md": "Getting started with the RAG platform",
        "milvus-lite-notes.html": "Milvus Lite and Milvus server profiles",
        "embedding-cache.pdf": "Embedding cache and incremental builds",
        "data-protection-policy.docx": "Data protection policy for indexed documents",
        "release-notes.txt": "Release notes for the indexing pipeline",
    }
    for name, title in expected_titles.items():
        parsed = parse_source(units[name])
        assert parsed.quarantined == [], parsed.quarantined
        [document] = parsed.documents
        assert document.title == title
        assert document.doc_id == units[name].partition_key
        assert len(document.content_hash) == 16
    html = parse_source(units["milvus-lite-notes.html"]).documents[0]
    assert "not indexed" not in html.text and "Home | Docs" not in html.text  # scripts and nav dropped
    assert "BM25 function" in html.text
    docx = parse_source(units["data-protection-policy.docx"]).documents[0]
    assert "[REDACTED_EMAIL]" in docx.text  # table cells are text too


def test_jsonl_records_keep_their_own_ids():
    parsed = parse_source(_units(FIXTURES)["abstracts.jsonl"])
    assert len(parsed.documents) == 12
    assert parsed.documents[0].doc_id == "31715818"
    assert all(document.parser == "jsonl" for document in parsed.documents)


def test_partition_keys_are_stable_and_readable(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "Intro File.md").write_text("# Intro\n\nhello")
    first = discover_sources(tmp_path, "default", 10)
    (tmp_path / "notes" / "Intro File.md").write_text("# Intro\n\nchanged")
    second = discover_sources(tmp_path, "default", 10)
    assert first[0].partition_key == second[0].partition_key
    assert first[0].partition_key.startswith("notes-intro-file-md-")
    assert first[0].content_hash != second[0].content_hash


def test_large_jsonl_is_sharded_and_shards_are_stable(tmp_path):
    records = [{"_id": f"d{i}", "title": f"T{i}", "text": f"text {i}"} for i in range(50)]
    path = tmp_path / "big.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records))
    units = discover_sources(tmp_path, "default", shard_size=10)
    assert len(units) == jsonl_shard_count(50, 10) == 8
    parsed = [parse_source(unit) for unit in units]
    ids = sorted(d.doc_id for p in parsed for d in p.documents)
    assert ids == sorted(r["_id"] for r in records)  # every record in exactly one shard
    # change one record: exactly one shard's hash changes
    records[7]["text"] = "edited"
    path.write_text("\n".join(json.dumps(r) for r in records))
    after = discover_sources(tmp_path, "default", shard_size=10)
    changed = [a.partition_key for a, b in zip(units, after, strict=True) if a.content_hash != b.content_hash]
    assert len(changed) == 1


def test_gzipped_jsonl_is_read(tmp_path):
    (tmp_path / "c.jsonl.gz").write_bytes(gzip.compress(b'{"_id": "a", "title": "A", "text": "alpha"}\n'))
    [unit] = discover_sources(tmp_path, "default", 10)
    assert parse_source(unit).documents[0].text == "alpha"


def test_tenant_folders():
    assert tenant_of("tenant=acme/report.md", "default") == "acme"
    assert tenant_of("report.md", "default") == "default"
    assert tenant_of("tenant=acme", "default") == "default"


CORRUPT = {
    "scan.pdf": (b"%PDF-1.4\n" + bytes(range(256)) * 4, "PDF"),
    "not-really.pdf": (b"hello, I am text", "not a PDF"),
    "broken.docx": (b"PK\x03\x04 definitely not a zip", "corrupt .docx"),
    "binary.txt": (b"abc\x00\x01\x02\x00def", "binary content"),
    "empty.md": (b"   \n\n", "empty file"),
    "latin1.txt": ("café crème".encode("latin-1"), "not valid UTF-8"),
    "whitespace.html": (b"<html><body><script>x()</script></body></html>", "no text after parsing"),
    "bad.jsonl.gz": (b"\x1f\x8b not gzip", "corrupt gzip"),
}


@pytest.mark.parametrize("name", sorted(CORRUPT))
def test_bad_files_are_quarantined_with_a_reason(tmp_path, name):
    content, reason = CORRUPT[name]
    (tmp_path / name).write_bytes(content)
    [unit] = discover_sources(tmp_path, "default", 10)
    parsed = parse_source(unit)
    assert parsed.documents == []
    [item] = parsed.quarantined
    assert reason in item.reason


def test_unreadable_and_oversized_files_are_quarantined(tmp_path):
    (tmp_path / "dangling.md").symlink_to(tmp_path / "nowhere.md")
    (tmp_path / "huge.txt").write_text("x" * 3_000_000)
    units = {unit.relative_path: unit for unit in discover_sources(tmp_path, "default", 10)}
    assert "cannot read" in parse_source(units["dangling.md"]).quarantined[0].reason
    assert "RAG_MAX_FILE_MB" in parse_source(units["huge.txt"], max_file_mb=1).quarantined[0].reason


def test_bad_jsonl_records_are_quarantined_and_the_rest_kept(tmp_path):
    lines = [
        '{"_id": "ok1", "title": "One", "text": "first"}',
        "{not json",
        '{"title": "no id", "text": "x"}',
        '{"_id": "ok1", "title": "dup", "text": "again"}',
        '{"_id": "ok2", "title": "Two", "text": "second"}',
    ]
    (tmp_path / "mixed.jsonl").write_text("\n".join(lines))
    [unit] = discover_sources(tmp_path, "default", 10)
    parsed = parse_source(unit)
    assert [d.doc_id for d in parsed.documents] == ["ok1", "ok2"]
    reasons = [q.describe() for q in parsed.quarantined]
    assert any("line 2" in r and "invalid JSON" in r for r in reasons)
    assert any("line 3" in r and "_id" in r for r in reasons)
    assert any("line 4" in r and "duplicate" in r for r in reasons)


def test_decoding_and_normalisation():
    assert decode_text("\ufeffhé".encode()) == "hé"
    assert decode_text("hi".encode("utf-16")) == "hi"
    assert normalise_text("a  \t b\r\n\n\n\nc\x07") == "a b\n\nc"


def test_missing_folder_names_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="RAG_DOCUMENTS_DIR"):
        discover_sources(tmp_path / "absent", "default", 10)


def test_docx_fixture_is_a_real_zip():
    assert zipfile.is_zipfile(FIXTURES / "data-protection-policy.docx")
