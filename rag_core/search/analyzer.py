"""The one BM25 analyzer and scoring constants, shared by indexing (the Milvus BM25 function's index
parameters), the in-memory engine and evaluation, so every engine scores a query the same way.

Tokens are Milvus' standard analyzer's: runs of word characters, lowercased, no stop words. Scores are
Okapi BM25 with corpus-wide statistics: IDF(t) = ln(1 + (N − df + 0.5) / (df + 0.5)), query terms weighted
by how often the query repeats them.
"""

from __future__ import annotations

import re
from collections import Counter

import numpy as np

BM25_K1 = 1.5  # Milvus Lite applies 1.5 whatever the index parameters say; a Milvus server takes it from them
BM25_B = 0.75
_TOKEN = re.compile(r"\w+", re.UNICODE)


def tokenize(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


def term_counts(text: str) -> Counter[str]:
    return Counter(tokenize(text))


def idf(documents: int, document_frequency: np.ndarray | float) -> np.ndarray | float:
    return np.log1p((documents - document_frequency + 0.5) / (document_frequency + 0.5))


def term_weights(frequency: np.ndarray, length: np.ndarray, average_length: float) -> np.ndarray:
    """The BM25 saturation of a term's frequency in documents of these lengths."""
    norm = BM25_K1 * (1.0 - BM25_B + BM25_B * length / max(average_length, 1e-9))
    return frequency * (BM25_K1 + 1.0) / (frequency + norm)
