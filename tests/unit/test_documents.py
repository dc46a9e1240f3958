import gzip
import json
import zipfile
from pathlib import Path

import pytest

from rag_core.documents import (
    ParseLimits,
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
    assert "RAG_MAX_FILE_MB" in parse_source(units["huge.txt"], ParseLimits(max_file_mb=1)).quarantined[0].reason


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


def _gzip_bomb(path: Path, expanded_mb: int) -> int:
    line = json.dumps({"_id": "x", "title": "t", "text": "a" * 1000}).encode() + b"\n"
    with gzip.open(path, "wb") as handle:
        for _ in range(expanded_mb * 1000):
            handle.write(line)
    return path.stat().st_size


def test_a_gzip_bomb_is_quarantined_before_it_expands(tmp_path):
    compressed = _gzip_bomb(tmp_path / "bomb.jsonl.gz", expanded_mb=30)
    assert compressed < 200_000  # a few hundred KB on disk, 30 MB expanded
    limits = ParseLimits(max_expanded_mb=25)
    [unit] = discover_sources(tmp_path, "default", 10, limits)
    [item] = parse_source(unit, limits).quarantined
    assert "decompression bomb" in item.reason and "RAG_MAX_EXPANDED_MB" in item.reason
    # the ratio limit catches it below the absolute cap, once past the free 20 MB
    [item] = parse_source(unit, ParseLimits(max_compression_ratio=10)).quarantined
    assert "RAG_MAX_COMPRESSION_RATIO" in item.reason


def test_a_multi_member_gzip_within_the_limits_parses(tmp_path):
    path = tmp_path / "two.jsonl.gz"
    path.write_bytes(
        gzip.compress(b'{"_id": "a", "text": "first"}\n') + gzip.compress(b'{"_id": "b", "text": "second"}\n')
    )
    [unit] = discover_sources(tmp_path, "default", 10)
    assert [document.doc_id for document in parse_source(unit).documents] == ["a", "b"]


def test_a_docx_that_expands_enormously_is_quarantined_before_parsing(tmp_path):
    source = FIXTURES / "data-protection-policy.docx"
    target = tmp_path / "bomb.docx"
    with zipfile.ZipFile(source) as original, zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as bomb:
        for member in original.infolist():
            data = original.read(member)
            if member.filename == "word/document.xml":
                paragraph = b"<w:p><w:r><w:t>" + b"spam " * 200 + b"</w:t></w:r></w:p>"
                data = data.replace(b"<w:body>", b"<w:body>" + paragraph * 30_000, 1)
            bomb.writestr(member, data)
    assert target.stat().st_size < 1_000_000
    [unit] = discover_sources(tmp_path, "default", 10)
    [item] = parse_source(unit, ParseLimits(max_compression_ratio=50)).quarantined
    assert "decompression bomb" in item.reason


def test_a_document_over_the_character_limit_is_quarantined(tmp_path):
    (tmp_path / "long.txt").write_text("word " * 5000)
    (tmp_path / "records.jsonl").write_text(
        json.dumps({"_id": "big", "text": "word " * 5000}) + "\n" + json.dumps({"_id": "small", "text": "ok"}) + "\n"
    )
    limits = ParseLimits(max_document_chars=10_000)
    units = {unit.relative_path: unit for unit in discover_sources(tmp_path, "default", 10)}
    assert "RAG_MAX_DOCUMENT_CHARS" in parse_source(units["long.txt"], limits).quarantined[0].reason
    records = parse_source(units["records.jsonl"], limits)
    assert [document.doc_id for document in records.documents] == ["small"]
    assert "RAG_MAX_DOCUMENT_CHARS" in records.quarantined[0].reason


def test_an_id_over_the_milvus_field_limit_is_quarantined_not_the_file(tmp_path):
    (tmp_path / "ids.jsonl").write_text(
        json.dumps({"_id": "x" * 600, "text": "too long an id"})
        + "\n"
        + json.dumps({"_id": "é" * 300, "text": "600 bytes in UTF-8"})
        + "\n"
        + json.dumps({"_id": "fine", "text": "kept"})
        + "\n"
    )
    [unit] = discover_sources(tmp_path, "default", 10)
    parsed = parse_source(unit)
    assert [document.doc_id for document in parsed.documents] == ["fine"]
    assert len(parsed.quarantined) == 2 and all("limit is 512" in item.reason for item in parsed.quarantined)


def test_symlinks_out_of_the_folder_are_quarantined_and_never_read(tmp_path):
    documents, outside = tmp_path / "documents", tmp_path / "outside"
    documents.mkdir()
    outside.mkdir()
    (outside / "secret.md").write_text("the root password is hunter2")
    (documents / "inside.md").write_text("# Inside\n\nan ordinary file")
    (documents / "passwd.txt").symlink_to("/etc/passwd")
    (documents / "secret.md").symlink_to(outside / "secret.md")
    (documents / "alias.md").symlink_to(documents / "inside.md")  # a link that stays inside is fine
    (documents / "linked-folder").symlink_to(outside, target_is_directory=True)
    units = {unit.relative_path: unit for unit in discover_sources(documents, "default", 10)}
    assert set(units) == {"inside.md", "passwd.txt", "secret.md", "alias.md"}  # linked folders are not walked
    for name in ("passwd.txt", "secret.md"):
        parsed = parse_source(units[name])
        assert parsed.documents == [] and "outside the documents folder" in parsed.quarantined[0].reason
    assert parse_source(units["alias.md"]).documents[0].text.endswith("an ordinary file")
