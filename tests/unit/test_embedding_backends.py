"""The embedding backends (RAG_EMBEDDING_BACKEND) with the real bundled MiniLM: the ONNX fp32 and int8 and the
OpenVINO (bf16 where the CPU has it) vectors agree with torch on SciFact, each backend has its own version and
collection, and a build's backend is what serving reads back from the collection."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from rag_core.chunking import ChunkingConfig, search_text
from rag_core.embedding import Embedder, backend_of
from rag_core.models import BUNDLED_MODEL, ModelResolver, load_embedder
from rag_core.promotion import index_build, spec_of
from rag_core.settings import Settings, bundled_model_dir, vendored_eval_dataset
from rag_core.store import SCHEMA_VERSION, milvus_name
from rag_core.tracking import Tracker

BACKENDS = ("torch", "onnx", "onnx-int8", "openvino")


@pytest.fixture(scope="module")
def scifact_texts() -> list[str]:
    """50 abstracts as the pipeline embeds them (title + text): 40 in corpus order and the 10 longest,
    which the model truncates at 256 tokens."""
    with gzip.open(vendored_eval_dataset() / "corpus.jsonl.gz", "rt") as corpus:
        texts = [search_text(r["title"], r["text"]) for r in map(json.loads, corpus)]
    return texts[:40] + sorted(texts[40:], key=len)[-10:]


@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("onnx")


@pytest.fixture(scope="module")
def torch_vectors(scifact_texts: list[str]) -> np.ndarray:
    return Embedder(bundled_model_dir()).encode(scifact_texts)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["onnx", "onnx-int8"])
def test_onnx_vectors_match_torch(
    backend: str, scifact_texts: list[str], torch_vectors: np.ndarray, onnx_dir: Path
) -> None:
    embedder = Embedder(bundled_model_dir(), backend=backend, onnx_dir=onnx_dir)
    vectors = embedder.encode(scifact_texts)
    assert vectors.shape == torch_vectors.shape and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    cosines = np.sum(vectors * torch_vectors, axis=1)
    assert cosines.min() >= (0.9999 if backend == "onnx" else 0.99), f"{backend}: min cosine {cosines.min():.4f}"
    # One text alone (a query: no batch, no padding) is the same vector as in the batch.
    alone = np.vstack([embedder.encode([text]) for text in scifact_texts[:3]])
    assert np.sum(alone * torch_vectors[:3], axis=1).min() >= 0.99
    # Exported once: the cached file under onnx_dir, nothing written next to the model.
    cached = sorted(path.name for path in onnx_dir.rglob("*.onnx"))
    assert ("model-int8.onnx" in cached) == (backend == "onnx-int8") and "model.onnx" in cached
    assert not list(bundled_model_dir().rglob("*.onnx"))
    assert embedder.max_seq_length == 256 and embedder.dimension == 384


@pytest.mark.slow
def test_openvino_vectors_match_torch(scifact_texts: list[str], torch_vectors: np.ndarray, onnx_dir: Path) -> None:
    embedder = Embedder(bundled_model_dir(), backend="openvino", onnx_dir=onnx_dir)
    vectors = embedder.encode(scifact_texts)
    assert embedder.version.endswith("+openvino") and embedder.onnx.model.precision in ("bf16", "f32")
    assert vectors.shape == torch_vectors.shape and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    cosines = np.sum(vectors * torch_vectors, axis=1)
    assert cosines.min() >= 0.99 and cosines.mean() >= 0.999, f"min {cosines.min():.5f}, mean {cosines.mean():.5f}"
    alone = np.vstack([embedder.encode([text]) for text in scifact_texts[:3]])  # queries: no batch, no padding
    assert np.sum(alone * torch_vectors[:3], axis=1).min() >= 0.99
    # Converted once from the cached fp32 ONNX export: the IR (xml + bin) beside it, nothing next to the model.
    cached = {path.name for path in onnx_dir.rglob("*") if path.is_file()}
    assert {"model.onnx", "model-openvino.xml", "model-openvino.bin"} <= cached
    assert not [name for name in cached if name.startswith(".")]  # no staging files left
    assert not list(bundled_model_dir().rglob("*.xml"))
    assert embedder.max_seq_length == 256 and embedder.dimension == 384


def test_version_names_the_backend_and_torch_keeps_todays() -> None:
    versions = {backend: Embedder(bundled_model_dir(), backend=backend).version for backend in BACKENDS}
    name, weights = versions["torch"].split("@")
    assert name == "all-MiniLM-L6-v2" and len(weights) == 12 and "+" not in weights
    assert versions["onnx"] == f"{versions['torch']}+onnx"
    assert versions["onnx-int8"] == f"{versions['torch']}+onnx-int8"
    assert versions["openvino"] == f"{versions['torch']}+openvino"
    assert {backend: backend_of(version) for backend, version in versions.items()} == {b: b for b in BACKENDS}


def test_collection_name_and_recorded_spec_follow_the_backend() -> None:
    chunking = ChunkingConfig(256, 32, 254)
    builds = {
        backend: index_build(Embedder(bundled_model_dir(), backend=backend), chunking) for backend in BACKENDS
    }
    names = {backend: build.collection_name for backend, build in builds.items()}
    assert len(set(names.values())) == len(BACKENDS), names
    model, weights = builds["torch"].embedding_model, builds["torch"].embedding_version.split("@")[1][:10]
    chunks = f"{chunking.describe()}_s{SCHEMA_VERSION}"
    assert names["torch"] == milvus_name(f"{model}_{weights}_{chunks}")  # today's name: existing indexes stay valid
    assert names["onnx"] == milvus_name(f"{model}_{weights}_onnx_{chunks}")
    assert names["onnx-int8"] == milvus_name(f"{model}_{weights}_onnx_int8_{chunks}")
    assert names["openvino"] == milvus_name(f"{model}_{weights}_openvino_{chunks}")
    for backend, build in builds.items():  # what serving reads back from the collection's properties
        assert spec_of(build.properties(), BUNDLED_MODEL).backend == backend
    assert spec_of({}, BUNDLED_MODEL).backend == "torch"  # collections from before backends existed


def test_load_embedder_passes_the_backend_and_caches_under_the_data_dir(tmp_path: Path) -> None:
    resolver = ModelResolver(tmp_path / "models", Tracker("sqlite:///unused.db", None))
    embedder = load_embedder(BUNDLED_MODEL, resolver, backend="onnx-int8")
    assert embedder.version.endswith("+onnx-int8") and embedder.onnx_dir == tmp_path / "models" / "onnx"
    assert load_embedder(BUNDLED_MODEL, resolver, backend="onnx-int8") is embedder
    assert load_embedder(BUNDLED_MODEL, resolver).version == embedder.version.removesuffix("+onnx-int8")


def test_unknown_backend_names_the_setting(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="RAG_EMBEDDING_BACKEND"):
        Embedder(bundled_model_dir(), backend="tensorrt")
    resolver = ModelResolver(tmp_path / "models", Tracker("sqlite:///unused.db", None))
    with pytest.raises(ValueError, match="RAG_EMBEDDING_BACKEND"):
        load_embedder(BUNDLED_MODEL, resolver, backend="tensorrt-int8")
    with pytest.raises(ValueError, match="RAG_EMBEDDING_BACKEND"):
        Settings(embedding_backend="int4")
    with pytest.raises(ValueError, match="RAG_EMBEDDING_BACKEND"):  # no GPU path for onnxruntime here
        Embedder(bundled_model_dir(), device="cuda", backend="onnx")
    with pytest.raises(ValueError, match="RAG_EMBEDDING_BACKEND"):  # nor for OpenVINO (its CPU plugin only)
        Embedder(bundled_model_dir(), device="cuda", backend="openvino")


def test_onnx_backend_refuses_a_pipeline_it_cannot_reproduce(tmp_path: Path) -> None:
    model = tmp_path / "cls-model"
    model.mkdir()
    for item in bundled_model_dir().iterdir():
        if item.is_file():
            (model / item.name).symlink_to(item)
    (model / "1_Pooling").mkdir()
    (model / "1_Pooling" / "config.json").write_text(json.dumps({"embedding_dimension": 384, "pooling_mode": "cls"}))
    embedder = Embedder(model, backend="onnx", onnx_dir=tmp_path / "onnx")
    with pytest.raises(ValueError, match="mean pooling only.*RAG_EMBEDDING_BACKEND=torch"):
        embedder.encode(["a text"])
