from collections import Counter
from dataclasses import replace

import pytest

from rag_core.chunking import (
    DOCUMENT_POSITION,
    TEXT_MAX_BYTES,
    Chunk,
    ChunkingConfig,
    chunk_documents,
    passages,
    token_windows,
)
from rag_core.documents import Document
from rag_core.embedding import Embedder
from rag_core.search.analyzer import ENGLISH, STANDARD, analyzed, term_counts
from rag_core.settings import bundled_model_dir


@pytest.fixture(scope="module")
def tokenizer():
    return Embedder(bundled_model_dir()).tokenizer


def _document(text: str, title: str = "A title", doc_id: str = "doc") -> Document:
    return Document(doc_id, "key", "default", "a.md", title, text, "text", 0.0, "h")


def chunked(documents: list[Document], tokenizer, config: ChunkingConfig) -> list[Chunk]:
    """The chunks, without the document entries."""
    return passages(chunk_documents(documents, tokenizer, config))


LONG = " ".join(f"Sentence number {i} talks about topic {i % 7} in some detail." for i in range(120))


def test_chunks_fit_the_model_with_their_title(tokenizer):
    config = ChunkingConfig(max_tokens=256, overlap_tokens=32, model_limit=254)
    chunks = chunked([_document(LONG, title="A rather long title " * 5)], tokenizer, config)
    assert len(chunks) > 3
    for chunk in chunks:
        with_specials = tokenizer(chunk.embedded)["input_ids"]
        assert len(with_specials) <= 256, len(with_specials)
        assert chunk.embedded.startswith("A rather long title")


def test_offsets_point_into_the_document_and_chunks_overlap(tokenizer):
    document = _document(LONG)
    chunks = chunked([document], tokenizer, ChunkingConfig(max_tokens=80, overlap_tokens=16))
    for chunk in chunks:
        assert document.text[chunk.start_char : chunk.end_char] == chunk.text
    for first, second in zip(chunks, chunks[1:], strict=False):
        assert second.start_char < first.end_char  # overlap
    assert chunks[0].start_char == 0 and chunks[-1].end_char == len(document.text)
    # ends snap to a sentence boundary where one is near
    assert sum(chunk.text.endswith(".") for chunk in chunks[:-1]) >= len(chunks) - 2


def test_ids_are_deterministic_and_change_with_content(tokenizer):
    config = ChunkingConfig(max_tokens=80, overlap_tokens=16)
    first = chunked([_document(LONG)], tokenizer, config)
    again = chunked([_document(LONG)], tokenizer, config)
    assert [c.chunk_id for c in first] == [c.chunk_id for c in again]
    edited = chunked([_document(LONG.replace("number 0 ", "number zero "))], tokenizer, config)
    assert edited[0].chunk_id != first[0].chunk_id
    assert edited[-1].chunk_id == first[-1].chunk_id  # untouched passages keep their ids
    assert len({c.chunk_id for c in first}) == len(first)


def test_short_document_is_one_chunk(tokenizer):
    [chunk] = chunked([_document("Just one line.", title="")], tokenizer, ChunkingConfig())
    assert chunk.embedded == "Just one line." and chunk.position == 0
    assert chunk.search_text == "just one line"  # BM25's terms, stemmed (search.analyzer)


def test_each_document_has_one_whole_text_entry_for_bm25_with_its_first_chunks_vector(tokenizer):
    documents = [_document(LONG, doc_id="long"), _document("Just one line.", doc_id="short")]
    rows = chunk_documents(documents, tokenizer, ChunkingConfig(max_tokens=80, overlap_tokens=16))
    entries = [row for row in rows if row.is_document_entry]
    assert [entry.doc_id for entry in entries] == ["long", "short"]
    for entry, document in zip(entries, documents, strict=True):
        first = next(row for row in rows if row.doc_id == entry.doc_id and row.position == 0)
        assert entry.position == DOCUMENT_POSITION and entry.text == ""  # never shown: a chunk is
        assert entry.search_text == analyzed(f"{document.title}\n{document.text}", ENGLISH)  # the whole text
        assert entry.embedded == first.embedded and entry.content_hash == first.content_hash  # no encode
        assert (entry.start_char, entry.end_char) == (0, len(document.text))
    assert len({row.chunk_id for row in rows}) == len(rows)
    # Off, nothing but the chunks; the build's chunking says which it is.
    plain = ChunkingConfig(max_tokens=80, overlap_tokens=16, document_entries=False)
    assert not any(row.is_document_entry for row in chunk_documents(documents, tokenizer, plain))
    assert (
        plain.describe() == "tokens80-overlap16-stem" and ChunkingConfig().describe() == "tokens256-overlap32-docs-stem"
    )


def test_the_bm25_field_holds_stems_while_ids_and_the_embedded_text_keep_the_words(tokenizer):
    document = _document("Stem cells divided; the cell's division rates were measured.", title="Dividing Cells")
    config = ChunkingConfig(document_entries=False)
    [stemmed] = chunk_documents([document], tokenizer, config)
    [written] = chunk_documents([document], tokenizer, replace(config, bm25_analyzer=STANDARD))
    assert written.search_text == written.embedded == stemmed.embedded == f"Dividing Cells\n{document.text}"
    assert stemmed.search_text == "divid cell stem cell divid the cell s divis rate were measur"
    # The analyzer shapes only what BM25 matches: ids and the embedding cache key stay the same.
    assert (stemmed.chunk_id, stemmed.content_hash) == (written.chunk_id, written.content_hash)
    assert replace(config, bm25_analyzer=STANDARD).describe() == "tokens256-overlap32"
    # Stems are words again: any engine's tokenizer finds exactly them, and a query finds them in any form.
    assert term_counts(stemmed.search_text) == Counter(stemmed.search_text.split(" "))
    assert analyzed("DIVIDING a Cell", ENGLISH) == "divid a cell"
    with pytest.raises(ValueError, match="unknown BM25 analyzer 'porter'; choose one of english, standard"):
        analyzed("cells", "porter")


def test_window_always_advances():
    offsets = [(i, i + 1) for i in range(10)]
    assert token_windows("x" * 10, offsets, size=4, overlap=3) == [
        (0, 4),
        (1, 5),
        (2, 6),
        (3, 7),
        (4, 8),
        (5, 9),
        (6, 10),
    ]


def test_a_run_without_spaces_is_split_to_fit_the_milvus_text_field(tokenizer):
    from rag_core.chunking import PASSAGE_MAX_CHARS

    run = "é" * 70_000  # one token to the tokenizer; 140 KB in UTF-8
    document = _document(f"Before the run. {run} After the run.")
    rows = chunk_documents([document], tokenizer, ChunkingConfig())
    [entry] = [row for row in rows if row.is_document_entry]
    assert len(entry.search_text.encode()) <= TEXT_MAX_BYTES  # the whole text, cut to what Milvus holds
    chunks = passages(rows)
    assert len(chunks) >= 70_000 // PASSAGE_MAX_CHARS
    for chunk in chunks:
        assert len(chunk.search_text.encode()) <= TEXT_MAX_BYTES and len(chunk.text) <= PASSAGE_MAX_CHARS
        assert document.text[chunk.start_char : chunk.end_char] == chunk.text
    assert "".join(chunk.text for chunk in chunks).count("é") >= 70_000
    assert len({chunk.chunk_id for chunk in chunks}) == len(chunks)


def test_chunk_ids_are_scoped_by_tenant_and_source(tokenizer):
    """The uploader picks `_id`: the same id and text in another tenant or file must be another row."""
    from rag_core.documents import Document

    def chunk_of(tenant: str, source: str) -> str:
        document = Document("same-id", "key", tenant, source, "Title", "the same text", "jsonl", 0.0, "h")
        return chunk_documents([document], tokenizer, ChunkingConfig())[0].chunk_id

    ids = {chunk_of("default", "a.jsonl"), chunk_of("acme", "tenant=acme/a.jsonl"), chunk_of("default", "b.jsonl")}
    assert len(ids) == 3
    assert chunk_of("default", "a.jsonl") == chunk_of("default", "a.jsonl")  # still deterministic
    assert all(len(chunk_id.encode()) <= 256 for chunk_id in ids)
