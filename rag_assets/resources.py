"""Dagster resources: typed, configurable wrappers over rag_core, built from the one Settings object."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from functools import lru_cache
from pathlib import Path

from dagster import ConfigurableResource

from rag_core.catalog import Catalog
from rag_core.chunking import ChunkingConfig
from rag_core.documents import SourceUnit, discover_sources
from rag_core.embedding import Embedder, EmbeddingCache
from rag_core.settings import Settings
from rag_core.store import MilvusStore, milvus_client


@lru_cache(maxsize=4)
def _embedder(model_dir: str, device: str, batch_size: int) -> Embedder:
    return Embedder(Path(model_dir), device=device, batch_size=batch_size)


@lru_cache(maxsize=4)
def _catalog(url: str) -> Catalog:
    return Catalog(url)


class SourcesResource(ConfigurableResource):
    """The watched documents folder and how it is cut into partitions."""

    documents_dir: str
    default_tenant: str = "default"
    jsonl_shard_size: int = 1000
    max_file_mb: float = 50.0
    redact_pii: bool = False
    batch_threshold: int = 20

    def discover(self) -> list[SourceUnit]:
        return discover_sources(Path(self.documents_dir), self.default_tenant, self.jsonl_shard_size)

    def units_for(self, partition_keys: Sequence[str]) -> tuple[dict[str, SourceUnit], list[str]]:
        """The units for these partitions, and the keys whose files are gone."""
        wanted = set(partition_keys)
        units = {unit.partition_key: unit for unit in self.discover() if unit.partition_key in wanted}
        return units, [key for key in partition_keys if key not in units]


class EmbedderResource(ConfigurableResource):
    model_dir: str
    device: str = "cpu"
    batch_size: int = 64
    cache_path: str
    chunk_max_tokens: int = 256
    chunk_overlap_tokens: int = 32

    def get(self) -> Embedder:
        return _embedder(self.model_dir, self.device, self.batch_size)

    def cache(self) -> EmbeddingCache:
        return EmbeddingCache(Path(self.cache_path))

    def chunking(self) -> ChunkingConfig:
        """Chunks (with their title) fit the model's sequence length less its two special tokens."""
        return ChunkingConfig(self.chunk_max_tokens, self.chunk_overlap_tokens, self.get().max_seq_length - 2)


class MilvusResource(ConfigurableResource):
    uri: str
    token: str = ""
    alias: str = "rag_chunks"
    lock_timeout_s: float = 120.0

    @contextlib.contextmanager
    def store(self) -> Iterator[MilvusStore]:
        with milvus_client(self.uri, self.token, self.lock_timeout_s) as client:
            yield MilvusStore(client, self.alias)


class CatalogResource(ConfigurableResource):
    url: str

    def get(self) -> Catalog:
        return _catalog(self.url)


def build_resources(settings: Settings) -> dict[str, ConfigurableResource]:
    from rag_assets.io_manager import PartitionedPickleIOManager

    return {
        "sources": SourcesResource(
            documents_dir=str(settings.documents_dir.resolve()),
            default_tenant=settings.default_tenant,
            jsonl_shard_size=settings.jsonl_shard_size,
            max_file_mb=settings.max_file_mb,
            redact_pii=settings.redact_pii,
            batch_threshold=settings.sensor_batch_threshold,
        ),
        "embedder": EmbedderResource(
            model_dir=str(settings.resolved_model_dir),
            device=settings.embedding_device,
            batch_size=settings.embedding_batch_size,
            cache_path=str(settings.embedding_cache_path),
            chunk_max_tokens=settings.chunk_max_tokens,
            chunk_overlap_tokens=settings.chunk_overlap_tokens,
        ),
        "milvus": MilvusResource(
            uri=settings.resolved_milvus_uri,
            token=settings.milvus_token,
            alias=settings.collection_alias,
            lock_timeout_s=settings.milvus_lock_timeout_s,
        ),
        "catalog": CatalogResource(url=settings.resolved_catalog_url),
        "staging_io_manager": PartitionedPickleIOManager(base_dir=str(settings.staging_dir)),
    }
