"""Token-aware chunking measured with the embedder's own tokenizer.

Each chunk fits the model's maximum sequence length together with its title, overlaps its neighbour,
prefers to end on a sentence or paragraph boundary, and keeps character offsets into the normalised
document text so answers can cite the exact passage.

Beside its chunks each document gets one **document entry** (position -1): its whole text for BM25, which
scores a document better whole than by its best chunk (evals/doc_representation.py: SciFact and the man-page
corpus, train and test). The entry is never shown and never searched densely (its vector is its first
chunk's, so it costs no encode); BM25-only retrieval ranks documents by it, then shows each one's best chunk.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from rag_core.documents import Document
from rag_core.ids import chunk_id, content_hash
from rag_core.search.analyzer import DEFAULT_ANALYZER, ENGLISH, analyzed

SENTENCE_END = ".!?;:"
TEXT_MAX_BYTES = 65535  # Milvus' VARCHAR limit for a chunk's text, in UTF-8 bytes
# A window of 256 tokens is ~1,500 characters of prose; far more means tokens the model cannot read (a
# 70 KB run without spaces is one [UNK] token). Such windows are cut into pieces of at most this many
# characters, which also keeps every piece (4 bytes a character at worst, plus a 500-character title)
# under TEXT_MAX_BYTES.
PASSAGE_MAX_CHARS = 8000
DOCUMENT_POSITION = -1  # a document entry's position: never a chunk's


@dataclass(frozen=True)
class Chunk:
    chunk_id: str
    doc_id: str
    partition_key: str
    tenant: str
    source: str
    title: str
    position: int
    text: str
    search_text: str  # what is BM25-indexed: title + passage, as the build's analyzer writes it (search.analyzer)
    start_char: int
    end_char: int
    token_count: int
    content_hash: str  # of the embedded text: the embedding cache's key
    # What is embedded: title + passage as written; a document entry's is its first chunk's (the same
    # vector, no encode).
    embedding_text: str

    @property
    def embedded(self) -> str:
        return self.embedding_text

    @property
    def is_document_entry(self) -> bool:
        return self.position == DOCUMENT_POSITION


@dataclass(frozen=True)
class ChunkingConfig:
    max_tokens: int = 256
    overlap_tokens: int = 32
    model_limit: int = 254  # the model's max sequence length minus its two special tokens
    min_passage_tokens: int = 64  # a very long title cannot squeeze passages below this
    document_entries: bool = True  # one whole-document BM25 entry per document beside its chunks
    bm25_analyzer: str = DEFAULT_ANALYZER  # what the BM25 field holds (rag_core.search.analyzer)

    def describe(self) -> str:
        entries = "-docs" if self.document_entries else ""
        stemmed = "-stem" if self.bm25_analyzer == ENGLISH else ""
        return f"tokens{self.max_tokens}-overlap{self.overlap_tokens}{entries}{stemmed}"


def _is_boundary(text: str, end_char: int) -> bool:
    before = text[end_char - 1] if end_char > 0 else ""
    after = text[end_char] if end_char < len(text) else "\n"
    return after == "\n" or (before in SENTENCE_END and after.isspace())


def token_windows(text: str, offsets: Sequence[tuple[int, int]], size: int, overlap: int) -> list[tuple[int, int]]:
    """(first token, end token) windows; ends move back to a boundary within the window's last third."""
    windows, start, count = [], 0, len(offsets)
    while start < count:
        end = min(start + size, count)
        if end < count:
            earliest = start + (2 * size) // 3
            for candidate in range(end, earliest, -1):
                if _is_boundary(text, offsets[candidate - 1][1]):
                    end = candidate
                    break
        windows.append((start, end))
        if end >= count:
            break
        start = max(end - overlap, start + 1)
    return windows


def _bounded(offsets: Sequence[tuple[int, int]], first: int, end: int) -> list[tuple[int, int, int]]:
    """(start char, end char, tokens) of a window, cut into pieces of at most PASSAGE_MAX_CHARS."""
    start_char, end_char = offsets[first][0], offsets[end - 1][1]
    if end_char - start_char <= PASSAGE_MAX_CHARS:
        return [(start_char, end_char, end - first)]
    pieces = []
    for start in range(start_char, end_char, PASSAGE_MAX_CHARS):
        stop = min(start + PASSAGE_MAX_CHARS, end_char)
        tokens = sum(1 for token_start, token_end in offsets[first:end] if token_start < stop and token_end > start)
        pieces.append((start, stop, max(tokens, 1)))
    return pieces


def search_text(title: str, passage: str) -> str:
    return passage if not title or passage.startswith(title) else f"{title}\n{passage}"


def passages(rows: Iterable[Chunk]) -> list[Chunk]:
    """The chunks among rows, not the document entries: what is shown, counted as chunks and embedded."""
    return [row for row in rows if not row.is_document_entry]


def _within_bytes(text: str, limit: int) -> str:
    encoded = text.encode("utf-8")
    return text if len(encoded) <= limit else encoded[:limit].decode("utf-8", "ignore")


def _row(
    document: Document,
    position: int,
    text: str,
    searched: str,
    span: tuple[int, int, int],
    analyzer: str,
    head: Chunk | None = None,
) -> Chunk:
    """A row of `document`: a chunk, or (with `head`, its first chunk, whose vector it takes) its entry. `span` is
    (start char, end char, tokens); `searched` is title + text as written, which ids and the cache key hash."""
    start_char, end_char, token_count = span
    return Chunk(
        chunk_id=chunk_id(document.tenant, document.source, document.doc_id, position, searched),
        doc_id=document.doc_id,
        partition_key=document.partition_key,
        tenant=document.tenant,
        source=document.source,
        title=document.title,
        position=position,
        text=text,
        search_text=_within_bytes(analyzed(searched, analyzer), TEXT_MAX_BYTES),
        start_char=start_char,
        end_char=end_char,
        token_count=token_count,
        content_hash=head.content_hash if head else content_hash(searched),
        embedding_text=head.embedded if head else searched,
    )


def document_entry(document: Document, first: Chunk, token_count: int, analyzer: str) -> Chunk:
    """The document's whole text for BM25 (its first TEXT_MAX_BYTES), with its first chunk's vector. Its
    `text` stays empty: what is shown is always a chunk."""
    whole = _within_bytes(search_text(document.title, document.text), TEXT_MAX_BYTES)
    span = (0, len(document.text), token_count)
    return _row(document, DOCUMENT_POSITION, "", whole, span, analyzer, head=first)


def chunk_documents(documents: Sequence[Document], tokenizer, config: ChunkingConfig) -> list[Chunk]:
    """Chunks for many documents; one batched tokenizer call (fast tokenizers run it in Rust)."""
    if not documents:
        return []
    encodings = tokenizer(
        [document.text for document in documents],
        add_special_tokens=False,
        return_offsets_mapping=True,
        return_attention_mask=False,
        verbose=False,
    )
    titles = tokenizer(
        [f"{document.title}\n" if document.title else "" for document in documents],
        add_special_tokens=False,
        return_attention_mask=False,
        verbose=False,
    )
    chunks = []
    for document, offsets, title_ids in zip(documents, encodings["offset_mapping"], titles["input_ids"], strict=True):
        size = min(config.max_tokens, max(config.model_limit - len(title_ids), config.min_passage_tokens))
        overlap = min(config.overlap_tokens, size // 4)
        pieces = [
            piece
            for first, end in token_windows(document.text, offsets, size, overlap)
            for piece in _bounded(offsets, first, end)
        ]
        document_chunks = []
        for position, span in enumerate(pieces):
            passage = document.text[span[0] : span[1]]
            searched = search_text(document.title, passage)
            document_chunks.append(_row(document, position, passage, searched, span, config.bm25_analyzer))
        chunks += document_chunks
        if config.document_entries and document_chunks:
            chunks.append(document_entry(document, document_chunks[0], len(offsets), config.bm25_analyzer))
    return chunks
