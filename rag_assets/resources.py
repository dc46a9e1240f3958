"""Dagster resources: typed, configurable wrappers over rag_core, built from the one Settings object."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from dagster import ConfigurableResource, EnvVar, Failure
from pydantic import Field

from rag_core.build_record import BuildRecord
from rag_core.catalog import Catalog
from rag_core.chunking import ChunkingConfig
from rag_core.documents import ParseLimits, SourceUnit, discover_sources
from rag_core.embedding import Embedder, EmbeddingCache
from rag_core.evaluation import EvalDataset
from rag_core.generation import LLMConfig
from rag_core.models import BUNDLED_MODEL, ModelResolver, load_embedder
from rag_core.promotion import BuildSpec, served_fusion, served_reranker, served_spec, spec_of
from rag_core.query import RerankPolicy
from rag_core.rerank import Reranker
from rag_core.retrieval import FusionConfig
from rag_core.search.analyzer import DEFAULT_ANALYZER
from rag_core.search.engines import IndexConnection, MilvusEngine, Searcher
from rag_core.settings import Settings
from rag_core.store import MilvusStore
from rag_core.tracking import Tracker, artifact_root, tracking_uri


@lru_cache(maxsize=4)
def _catalog(url: str) -> Catalog:
    return Catalog(url)


class SourcesResource(ConfigurableResource):
    """The watched documents folder and how it is cut into partitions."""

    documents_dir: str
    default_tenant: str = "default"
    jsonl_shard_size: int = 1000
    max_file_mb: float = 50.0
    max_expanded_mb: float = 200.0
    max_compression_ratio: float = 100.0
    max_document_chars: int = 2_000_000
    redact_pii: bool = False
    batch_threshold: int = 20
    retry_delay_s: float = 60.0  # a failed index run is requested again after this, doubled per attempt
    retry_max_delay_s: float = 3600.0

    def limits(self) -> ParseLimits:
        return ParseLimits(self.max_file_mb, self.max_expanded_mb, self.max_compression_ratio, self.max_document_chars)

    def discover(self) -> list[SourceUnit]:
        return discover_sources(Path(self.documents_dir), self.default_tenant, self.jsonl_shard_size, self.limits())

    def units_for(self, partition_keys: Sequence[str]) -> tuple[dict[str, SourceUnit], list[str]]:
        """The units for these partitions, and the keys whose files are gone."""
        wanted = set(partition_keys)
        units = {unit.partition_key: unit for unit in self.discover() if unit.partition_key in wanted}
        return units, [key for key in partition_keys if key not in units]


@dataclass(frozen=True)
class SearchableBuild:
    """A collection to search, and the properties it records (what it was built with)."""

    collection: str
    searcher: Searcher
    properties: dict[str, str]


class MilvusResource(ConfigurableResource):
    """The index: Milvus (every write), and the engine searches run on (in memory for Milvus Lite)."""

    uri: str
    token: str = ""
    alias: str = "rag_chunks"
    lock_timeout_s: float = 120.0
    search_dir: str
    search_engine: str = "auto"

    def connection(self) -> IndexConnection:
        return IndexConnection(
            self.uri, self.token, self.alias, Path(self.search_dir), self.lock_timeout_s, self.search_engine
        )

    @contextlib.contextmanager
    def store(self) -> Iterator[MilvusStore]:
        with self.connection().store() as store:
            yield store

    def searcher(self, store: MilvusStore, collection: str) -> Searcher:
        """Searches over `collection` on this deployment's engine; the memory engine reads the search log,
        so `store` may be closed while it is used."""
        connection = self.connection()
        if connection.engine == "memory":
            return connection.memory_engine().searcher(collection)
        return MilvusEngine(store).searcher(collection)

    def served_collection(self, store: MilvusStore) -> str:
        served = store.alias_target()
        if served is None:
            raise Failure(f"alias {self.alias} serves nothing yet — build the index first (`rag index`)")
        return served

    @contextlib.contextmanager
    def searchable(self, choose: Callable[[MilvusStore], Mapping[str, str]]) -> Iterator[dict[str, SearchableBuild]]:
        """The collections `choose` names by role, ready to search. Milvus stays open while they are searched,
        except on the in-memory engine, which searches the search log: Milvus (a Lite file only one process
        may open) is let go at once, so other steps and the API keep writing and serving meanwhile."""
        with contextlib.ExitStack() as held:
            store = held.enter_context(self.store())
            builds = {
                role: SearchableBuild(name, self.searcher(store, name), store.collection_properties(name))
                for role, name in choose(store).items()
            }
            if self.connection().engine == "memory":
                held.close()
            yield builds


class TrackingResource(ConfigurableResource):
    """MLflow: the embedded SQLite store under the data dir, or MLFLOW_TRACKING_URI."""

    tracking_uri: str
    artifacts_dir: str = ""
    ui_url: str = "http://127.0.0.1:5000"  # where metadata links MLflow runs to
    dagster_ui_url: str = "http://127.0.0.1:3000"  # where MLflow runs link back to

    def tracker(self) -> Tracker:
        return Tracker(self.tracking_uri, Path(self.artifacts_dir) if self.artifacts_dir else None, self.ui_url)


class EmbedderResource(ConfigurableResource):
    """The embedding model, backend and chunking new builds use. Empty `model` / `backend` /
    `follow_served_chunking` mean "what the served collection was built with", so after a fine-tuned model
    (or an onnx-int8 build) is promoted, incremental indexing keeps writing the served build with it; an
    explicit model, backend or chunking is a candidate build. `decide_build` turns this into the one
    BuildSpec an indexing run carries."""

    milvus: MilvusResource
    model: str = ""
    backend: str = ""  # torch | onnx | onnx-int8; empty = the served build's (torch before any build)
    follow_served_chunking: bool = True
    chunk_max_tokens: int = 256
    chunk_overlap_tokens: int = 32
    document_entries: bool = True
    bm25_analyzer: str = DEFAULT_ANALYZER
    device: str = "cpu"
    batch_size: int = 64
    cache_path: str
    models_dir: str
    tracking: TrackingResource

    def resolver(self) -> ModelResolver:
        return ModelResolver(Path(self.models_dir), self.tracking.tracker())

    def load(self, reference: str, backend: str = "") -> Embedder:
        """Any model by reference (a candidate, the one a build records), on this device, with `backend` —
        pass the build's (`BuildSpec.backend`); empty: RAG_EMBEDDING_BACKEND if set, else torch."""
        backend = backend or self.backend or "torch"
        return load_embedder(reference, self.resolver(), self.device, self.batch_size, backend)

    def load_build(self, properties: dict[str, str]) -> Embedder:
        """The model a collection records it was built with, on the backend its vectors were embedded with:
        queries embed as its chunks were."""
        spec = spec_of(properties, BUNDLED_MODEL)
        return self.load(spec.model, spec.backend)

    def decide_build(self) -> BuildSpec:
        """The build a new indexing run writes, decided where the run is requested (the sensor, `rag index`)
        and carried with the run, so no step resolves it again. The embedding version is the one the model
        loads as now (only its weights are hashed: nothing is loaded into memory); the collection is the one
        that version and chunking make — the served one unless a model, backend or chunking is pinned."""
        with self.milvus.store() as store:
            served = served_spec(store, BUNDLED_MODEL)
            embedder = self.load(
                self.model or (served.model if served else BUNDLED_MODEL),
                self.backend or (served.backend if served else "torch"),
            )
            if self.follow_served_chunking and served:
                sizes = (served.chunk_max_tokens, served.chunk_overlap_tokens)
                entries, analyzer = served.document_entries, served.bm25_analyzer
            else:
                sizes = (self.chunk_max_tokens, self.chunk_overlap_tokens)
                entries, analyzer = self.document_entries, self.bm25_analyzer
            chunking = ChunkingConfig(*sizes, document_entries=entries, bm25_analyzer=analyzer)
            collection = store.collection_named(embedder.version, chunking.describe())
        return BuildSpec(
            model=embedder.reference,
            chunk_max_tokens=sizes[0],
            chunk_overlap_tokens=sizes[1],
            document_entries=entries,
            bm25_analyzer=analyzer,
            backend=embedder.backend,
            embedding_version=embedder.version,
            collection=collection,
            served=served.collection if served else "",
        )

    def cache(self) -> EmbeddingCache:
        return EmbeddingCache(Path(self.cache_path))


class CatalogResource(ConfigurableResource):
    url: str

    def get(self) -> Catalog:
        return _catalog(self.url)


class EvaluationResource(ConfigurableResource):
    """The labelled dataset, the modes, the gate, and the answer/judge models of the evaluation assets."""

    dataset_dir: str
    split: str = "test"
    train_split: str = "train"
    modes: list[str] = ["bm25", "dense", "hybrid"]
    gate_mode: str = "hybrid"
    gate_margin: float = 0.01
    promotion_min_effect: float = 0.005
    max_queries: int = 0
    tune_fusion: bool = True
    tenant: str = "default"
    # The served query config: no defaults here, build_resources copies them from the settings, and
    # `fusion()` / `llm()` build the config objects as the API does (FusionConfig and LLMConfig hold the defaults).
    fusion_method: str
    rrf_k: int
    dense_weight: float
    bm25_weight: float
    fusion_candidates: int
    head_bonus: float
    rerank_candidates: int
    rerank_min_gain: float
    # How the API picks a build's reranker (RAG_RERANK_MODEL / RAG_RERANK_WEIGHT): evaluation measures it too.
    rerank_model: str
    rerank_weight: float
    rerank_weight_configured: bool = False
    # True when the environment sets a fusion setting: it then wins over a fusion the gate adopted for a build.
    fusion_configured: bool = False
    llm_model: str
    llm_api_base: str
    llm_api_key: str = Field("", description="An EnvVar (RAG_LLM_API_KEY): read at run time, never shown.")
    llm_timeout_s: float
    llm_max_tokens: int
    injection_screen: str
    relevance_threshold: float
    data_dir: str
    rag_queries: int = 20
    judge_model: str = ""
    judge_api_base: str = ""
    judge_api_key: str = Field("", description="An EnvVar (RAG_JUDGE_API_KEY): read at run time, never shown.")
    reports_dir: str
    serving_db_url: str

    def dataset(self, split: str | None = None) -> EvalDataset:
        return EvalDataset.load(Path(self.dataset_dir), split or self.split)

    def report_folder(self, name: str) -> Path:
        """A new folder name for a report under the reports dir: the UTC time, then `name`."""
        return Path(self.reports_dir) / f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{name}"

    def fusion(self) -> FusionConfig:
        return FusionConfig.from_settings(self)

    def served_fusion(self, record: BuildRecord) -> FusionConfig:
        """The fusion the API serves this build with, so that evaluation measures what is served."""
        return served_fusion(record, self.fusion(), self.fusion_configured)

    def llm(self) -> LLMConfig:
        return LLMConfig.from_settings(self)

    def served_reranker(self, record: BuildRecord, resolver: ModelResolver, device: str = "cpu") -> Reranker | None:
        """The reranker the API serves this build with (rag_core.promotion.served_reranker), loaded; None when it
        serves the build unreranked."""
        policy = RerankPolicy.parse(self.rerank_model)
        choice = served_reranker(record, policy, self.rerank_weight, self.rerank_weight_configured)
        if choice is None:
            return None
        return Reranker.from_reference(choice.reference, resolver, device, choice.weight, choice.mode_weights())


def _secret(value: str, variable: str) -> str:
    """A secret as the environment variable it came from, read at run time: Dagster shows the variable's name
    in the resource config, never its value. Unset, there is nothing to hide."""
    return EnvVar(variable) if value else ""


# The fields a resource takes from the settings under the same name (the LLM and fusion ones so that
# LLMConfig.from_settings and FusionConfig.from_settings read the resource as they read the settings).
_SOURCES_FIELDS = (
    "default_tenant jsonl_shard_size max_file_mb max_expanded_mb max_compression_ratio max_document_chars redact_pii"
)
_EVALUATION_FIELDS = (
    "train_split fusion_method rrf_k dense_weight bm25_weight fusion_candidates head_bonus llm_model llm_api_base "
    "llm_timeout_s llm_max_tokens injection_screen relevance_threshold judge_model judge_api_base promotion_min_effect "
    "rerank_candidates rerank_min_gain rerank_model rerank_weight rerank_weight_configured"
)
_EVAL_PREFIXED_FIELDS = "split modes gate_mode gate_margin max_queries tune_fusion"  # eval_split → split, …


def _shared(settings: Settings, fields: str, prefix: str = "") -> dict[str, object]:
    """{field: the setting `<prefix><field>`} for each of the space-separated `fields`."""
    return {field: getattr(settings, prefix + field) for field in fields.split()}


def _sources(settings: Settings) -> SourcesResource:
    return SourcesResource(
        documents_dir=str(settings.documents_dir.resolve()),
        batch_threshold=settings.sensor_batch_threshold,
        retry_delay_s=settings.index_retry_delay_s,
        retry_max_delay_s=settings.index_retry_max_delay_s,
        **_shared(settings, _SOURCES_FIELDS),
    )


def _milvus(settings: Settings) -> MilvusResource:
    return MilvusResource(
        uri=settings.resolved_milvus_uri,
        token=settings.milvus_token,
        alias=settings.collection_alias,
        lock_timeout_s=settings.milvus_lock_timeout_s,
        search_dir=str(settings.search_dir),
        search_engine=settings.search_engine,
    )


def _embedder(settings: Settings, milvus: MilvusResource, tracking: TrackingResource) -> EmbedderResource:
    """A model, backend or chunking left unset in the environment follows the served build."""
    return EmbedderResource(
        milvus=milvus,
        model=settings.embedding_model,
        backend=settings.embedding_backend if "embedding_backend" in settings.model_fields_set else "",
        follow_served_chunking=not {"chunk_max_tokens", "chunk_overlap_tokens", "document_entries", "bm25_analyzer"}
        & settings.model_fields_set,
        chunk_max_tokens=settings.chunk_max_tokens,
        chunk_overlap_tokens=settings.chunk_overlap_tokens,
        document_entries=settings.document_entries,
        bm25_analyzer=settings.bm25_analyzer,
        device=settings.embedding_device,
        batch_size=settings.embedding_batch_size,
        cache_path=str(settings.embedding_cache_path),
        models_dir=str(settings.data_dir.resolve() / "models"),
        tracking=tracking,
    )


def _evaluation(settings: Settings) -> EvaluationResource:
    return EvaluationResource(
        dataset_dir=str(settings.eval_dataset_dir.resolve()),
        tenant=settings.default_tenant,
        rag_queries=settings.rag_eval_queries,
        llm_api_key=_secret(settings.llm_api_key, "RAG_LLM_API_KEY"),
        judge_api_key=_secret(settings.judge_api_key, "RAG_JUDGE_API_KEY"),
        data_dir=str(settings.data_dir.resolve()),
        reports_dir=str(settings.data_dir.resolve() / "reports"),
        serving_db_url=settings.resolved_serving_db_url,
        fusion_configured=settings.fusion_configured,
        **_shared(settings, _EVAL_PREFIXED_FIELDS, prefix="eval_"),
        **_shared(settings, _EVALUATION_FIELDS),
    )


def build_resources(settings: Settings) -> dict[str, ConfigurableResource]:
    from rag_assets.io_manager import PartitionedPickleIOManager

    tracking = TrackingResource(
        tracking_uri=tracking_uri(settings),
        artifacts_dir=str(artifact_root(settings) or ""),
        ui_url=settings.resolved_mlflow_ui_url,
        dagster_ui_url=settings.dagster_ui_url.rstrip("/"),
    )
    milvus = _milvus(settings)
    return {
        "sources": _sources(settings),
        "embedder": _embedder(settings, milvus, tracking),
        "milvus": milvus,
        "catalog": CatalogResource(url=settings.resolved_catalog_url),
        "tracking": tracking,
        "evaluation": _evaluation(settings),
        "staging_io_manager": PartitionedPickleIOManager(base_dir=str(settings.staging_dir)),
    }
