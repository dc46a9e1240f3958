"""Token-aware chunking measured with the embedder's own tokenizer.

Each chunk fits the model's maximum sequence length together with its title, overlaps its neighbour,
prefers to end on a sentence or paragraph boundary, and keeps character offsets into the normalised
document text so answers can cite the exact passage.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rag_core.documents import Document
from rag_core.ids import chunk_id, content_hash

SENTENCE_END = ".!?;:"
TEXT_MAX_BYTES = 65535  # Milvus' VARCHAR limit for a chunk's text, in UTF-8 bytes
# A window of 256 tokens is ~1,500 characters of prose; far more means tokens the model cannot read (a
# 70 KB run without spaces is one [UNK] token). Such windows are cut into pieces of at most this many
# characters, which also keeps every piece (4 bytes a character at worst, plus a 500-character title)
# under TEXT_MAX_BYTES.
PASSAGE_MAX_CHARS = 8000


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
    search_text: str  # what is embedded and BM25-indexed: title + passage
    start_char: int
    end_char: int
    token_count: int
    content_hash: str


@dataclass(frozen=True)
class ChunkingConfig:
    max_tokens: int = 256
    overlap_tokens: int = 32
    model_limit: int = 254  # the model's max sequence length minus its two special tokens
    min_passage_tokens: int = 64  # a very long title cannot squeeze passages below this

    def describe(self) -> str:
        return f"tokens{self.max_tokens}-overlap{self.overlap_tokens}"


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
        for position, (start_char, end_char, token_count) in enumerate(pieces):
            passage = document.text[start_char:end_char]
            embedded = search_text(document.title, passage)
            chunks.append(
                Chunk(
                    chunk_id=chunk_id(document.tenant, document.source, document.doc_id, position, embedded),
                    doc_id=document.doc_id,
                    partition_key=document.partition_key,
                    tenant=document.tenant,
                    source=document.source,
                    title=document.title,
                    position=position,
                    text=passage,
                    search_text=embedded,
                    start_char=start_char,
                    end_char=end_char,
                    token_count=token_count,
                    content_hash=content_hash(embedded),
                )
            )
    return chunks
