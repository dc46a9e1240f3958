"""The build a benchmark folder serves (`evals/bench_indexing.py --keep DIR`): its settings, the collection the
alias points at (or another), the embedder its queries embed with (its model and backend) and a searcher over
it on the in-memory engine — what the evaluation scripts open before they measure."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rag_core.build_record import BuildRecord
from rag_core.embedding import Embedder
from rag_core.models import BUNDLED_MODEL, ModelResolver, load_embedder
from rag_core.promotion import served_fusion, spec_of
from rag_core.retrieval import FusionConfig
from rag_core.search.engines import IndexConnection, Searcher
from rag_core.settings import Settings


@dataclass
class ServedBuild:
    settings: Settings
    connection: IndexConnection
    collection: str
    embedder: Embedder
    searcher: Searcher  # the in-memory engine's
    fusion: FusionConfig  # what the API serves it with (rag_core.promotion.served_fusion)


def open_build(folder: Path, collection: str = "") -> ServedBuild:
    work = folder.resolve()
    settings = Settings(data_dir=work / "data", documents_dir=work / "documents", dagster_home=work / "dagster")
    connection = IndexConnection.from_settings(settings)
    with connection.store() as store:
        collection = collection or store.alias_target()
        if not collection:
            raise SystemExit(f"{work} serves no build — make one with evals/bench_indexing.py --keep {work}")
        properties = store.collection_properties(collection)
    spec = spec_of(properties, BUNDLED_MODEL)
    fusion = served_fusion(BuildRecord.from_properties(properties), settings.fusion(), settings.fusion_configured)
    # Queries are embedded as the build's chunks were: its model and its backend.
    embedder = load_embedder(spec.model, ModelResolver.from_settings(settings), backend=spec.backend)
    searcher = connection.memory_engine().searcher(collection)
    return ServedBuild(settings, connection, collection, embedder, searcher, fusion)
