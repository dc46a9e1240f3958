"""The one BM25 analyzer and scoring constants, shared by indexing (the Milvus BM25 function's index
parameters), the in-memory engine and evaluation, so every engine scores a query the same way.

Tokens are Milvus' standard analyzer's: runs of letters, digits and underscores, lowercased, no stop
words. Tokenizing runs in Arrow's C++ kernels, for one query or a million chunks alike. Scores are Okapi
BM25: IDF(t) = ln(1 + (N − df + 0.5) / (df + 0.5)), query terms weighted by how often the query repeats them.

A build chooses what its BM25 field holds (`BM25_ANALYZERS`, recorded on the build):
- `english` (the default): each token replaced by its Snowball English stem ("cells" → "cell"), joined by
  spaces. The stemming happens here, before Milvus sees the text, because Milvus Lite has no stemmer and a
  Milvus server's stemmer is not the in-memory engine's: stemmed text tokenizes to the same terms everywhere.
  Picked on the train splits of two corpora (whole-document BM25 nDCG@10: SciFact +0.029, man pages
  +0.026; English stop words on top changed −0.004 / +0.000, so none are dropped).
- `standard`: the text as it is (builds from before the choice).
A query is analyzed by the build it searches (`analyzed`), so every engine matches the stored terms.
"""

from __future__ import annotations

import re
import threading
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp
import Stemmer

BM25_K1 = 1.5  # Milvus Lite applies 1.5 whatever the index parameters say; a Milvus server takes it from them
BM25_B = 0.75
_SEPARATORS = r"[^\p{L}\p{N}_]+"
SLICE_ROWS = 50_000
_WORD = re.compile(r"\w+")
STANDARD = "standard"
ENGLISH = "english"
BM25_ANALYZERS = (ENGLISH, STANDARD)
DEFAULT_ANALYZER = ENGLISH
_stemmers = threading.local()  # a PyStemmer object keeps a cache and is not safe across threads


def analyzed(text: str, analyzer: str) -> str:
    """What the BM25 field of a build with this analyzer holds for `text` (or what its query searches for)."""
    if analyzer == STANDARD:
        return text
    if analyzer != ENGLISH:
        raise ValueError(f"unknown BM25 analyzer {analyzer!r}; choose one of {', '.join(BM25_ANALYZERS)}")
    stemmer = getattr(_stemmers, "english", None)
    if stemmer is None:
        stemmer = _stemmers.english = Stemmer.Stemmer("english", 100_000)
    return " ".join(stemmer.stemWords(_words(text)))


def term_matrix(texts: pa.Array | pa.ChunkedArray | list[str]) -> tuple[sp.csr_matrix, list[str]]:
    """(documents × terms matrix of term counts, the terms). Texts are tokenized by Arrow in slices of
    `SLICE_ROWS`, so a million chunks never hold all their tokens as strings at once."""
    if isinstance(texts, pa.ChunkedArray):  # past 2 GB of text one array needs 64-bit offsets
        texts = pc.cast(texts, pa.large_string()).combine_chunks()
    elif not isinstance(texts, pa.Array):
        texts = pa.array(texts, pa.large_string())
    vocabulary: dict[str, int] = {}
    blocks = []
    for start in range(0, max(len(texts), 1), SLICE_ROWS):
        counts, terms = _slice_matrix(texts.slice(start, SLICE_ROWS))
        remap = np.fromiter((vocabulary.setdefault(term, len(vocabulary)) for term in terms), np.int32, len(terms))
        counts.indices = remap[counts.indices]
        blocks.append(counts)
    for block in blocks:
        block.resize(block.shape[0], len(vocabulary))
    merged = sp.vstack(blocks, format="csr") if len(blocks) > 1 else blocks[0]
    merged.sort_indices()
    return merged, list(vocabulary)


def _slice_matrix(texts: pa.Array) -> tuple[sp.csr_matrix, list[str]]:
    parts = pc.split_pattern_regex(pc.utf8_lower(texts.fill_null("")), _SEPARATORS)
    tokens = pc.list_flatten(parts)
    rows = pc.list_parent_indices(parts).to_numpy()
    nonempty = pc.not_equal(pc.utf8_length(tokens), 0)
    encoded = pc.dictionary_encode(tokens.filter(nonempty))
    rows = rows[nonempty.to_numpy(zero_copy_only=False)]
    columns = encoded.indices.to_numpy().astype(np.int32)
    indptr = np.zeros(len(texts) + 1, np.int64)
    np.cumsum(np.bincount(rows, minlength=len(texts)), out=indptr[1:])
    counts = sp.csr_matrix(
        (np.ones(len(columns), np.float32), columns, indptr), shape=(len(texts), len(encoded.dictionary))
    )
    counts.sum_duplicates()
    return counts, encoded.dictionary.to_pylist()


def term_counts(text: str) -> Counter[str]:
    """One query's terms. Python's `\\w` is the same class as `_SEPARATORS`' complement (tests check it on
    the corpus); Arrow's kernels pay a regex compile per call, which a single query should not."""
    return Counter(_words(text))


def _words(text: str) -> list[str]:
    """One text's tokens, lowercased: what a query's BM25 terms and the English analyzer's stems start from."""
    return _WORD.findall(text.lower())


def idf(documents: int, document_frequency: np.ndarray | float) -> np.ndarray | float:
    return np.log1p((documents - document_frequency + 0.5) / (document_frequency + 0.5))


def saturation(frequency: np.ndarray, length: np.ndarray, average_length: np.ndarray | float) -> np.ndarray:
    """BM25's term-frequency saturation for documents of these lengths (the part a query does not change)."""
    norm = BM25_K1 * (1.0 - BM25_B + BM25_B * length / np.maximum(average_length, 1e-9))
    return frequency * (BM25_K1 + 1.0) / (frequency + norm)
