"""The build a run writes is decided once, where the run is requested, and travels with it: real Dagster
runs on a real instance, Milvus Lite, the bundled model."""

from __future__ import annotations

import pytest
from dagster import AssetKey, DagsterInstance, instance_for_test

from rag_assets.assets.indexing import BUILD_TAG, build_tags
from rag_assets.cli import index
from rag_assets.definitions import build_definitions
from rag_assets.resources import build_resources
from rag_core.build_record import BuildRecord
from rag_core.ids import source_key
from rag_core.indexing import build_from_sources
from rag_core.models import BUNDLED_MODEL
from rag_core.promotion import BuildSpec, index_build
from rag_core.retrieval import Retriever
from rag_core.search.analyzer import ENGLISH, STANDARD
from rag_core.search.filters import SearchFilter
from rag_core.settings import Settings
from rag_core.store import IndexBuild
from tests.integration.pipeline_helpers import sensor_tick, served_rows, write_fixture_dataset

pytestmark = pytest.mark.slow
EARLY_STEPS = [AssetKey("raw_documents"), AssetKey("document_chunks"), AssetKey("chunk_embeddings")]
WRITE_STEP = [AssetKey("milvus_collection")]


@pytest.fixture
def instance(settings: Settings):
    settings.resolved_dagster_home.mkdir(parents=True)
    with instance_for_test(temp_dir=str(settings.resolved_dagster_home)) as instance:
        yield instance


def _run(settings: Settings, instance: DagsterInstance, key: str, tags: dict[str, str], steps: list[AssetKey]):
    job = build_definitions(settings).resolve_job_def("index_documents_job")
    return job.execute_in_process(
        partition_key=key, tags=tags, asset_selection=steps, instance=instance, raise_on_error=False
    )


def _failure(result) -> str:
    (failure,) = [event for event in result.all_events if event.is_step_failure]
    return failure.event_specific_data.error.message


def test_a_run_refuses_to_write_after_the_alias_moved_or_into_another_models_build(settings, instance):
    index(settings, instance=instance)
    key = source_key("getting-started.md")
    served_ids = served_rows(settings, entries=True)[key]
    markdown = settings.documents_dir / "getting-started.md"
    markdown.write_text(markdown.read_text() + "\nZebras index quickly.\n")
    (request,) = sensor_tick(settings, instance).run_requests
    spec = BuildSpec.from_json(request.tags[BUILD_TAG])  # decided by the sensor, where the run is requested
    milvus = build_resources(settings)["milvus"]
    with milvus.store() as store:
        assert spec.collection == spec.served == store.alias_target()
        assert store.record(spec.collection).embedding_version == spec.embedding_version
        other = store.ensure_collection(
            IndexBuild("other-model", "other-model@0123456789ab", 384, "tokens256-overlap32", BUNDLED_MODEL, 256, 32)
        )

    # The first steps of the requested run: chunks and vectors of model A.
    assert _run(settings, instance, key, request.tags, EARLY_STEPS).success
    with milvus.store() as store:
        store.point_alias(other)  # a promotion or rollback between the steps: now model B is served
    try:
        # The requested run goes on to its write step: it refuses, cleanly, and writes nothing anywhere.
        result = _run(settings, instance, key, request.tags, WRITE_STEP)
        assert not result.success
        assert f"the alias now serves {other}" in _failure(result) and "nothing was written" in _failure(result)

        # A run whose build is model B's collection gets model A's vectors: refused too.
        model_b = BuildSpec(BUNDLED_MODEL, 256, 32, "torch", "other-model@0123456789ab", other, served=other)
        result = _run(settings, instance, key, build_tags(model_b), WRITE_STEP)
        assert not result.success
        assert "embedded with another model" in _failure(result) and spec.embedding_version in _failure(result)

        with milvus.store() as store:
            assert store.count(other) == 0  # nothing of model A in model B's collection
            assert store.chunk_ids_by_source(spec.collection, [key])[key] == served_ids  # A's build untouched
        # The sensor asks again with the build now served (a new run key), so the change is not lost.
        (again,) = sensor_tick(settings, instance).run_requests
        assert again.run_key != request.run_key
        assert BuildSpec.from_json(again.tags[BUILD_TAG]).served == other
    finally:
        with milvus.store() as store:
            store.point_alias(spec.collection)

    # With the alias back, the requested run completes.
    assert _run(settings, instance, key, request.tags, WRITE_STEP).success
    assert any("Zebras" in text for text in _texts(settings, spec.collection, key))


def _texts(settings: Settings, collection: str, key: str) -> list[str]:
    with build_resources(settings)["milvus"].store() as store:
        ids = store.chunk_ids_by_source(collection, [key])[key]
        return list(store.texts_by_chunk_id(collection, sorted(ids)).values())


def test_a_run_launched_without_a_build_records_the_one_its_first_step_decided(settings, instance):
    """Materialize from the UI carries no build: the first step that needs one decides it, once, on the run."""
    index(settings, instance=instance)
    key = source_key("getting-started.md")
    markdown = settings.documents_dir / "getting-started.md"
    markdown.write_text(markdown.read_text() + "\nZebras index quickly.\n")
    result = _run(settings, instance, key, {}, [*EARLY_STEPS, *WRITE_STEP])
    assert result.success
    spec = BuildSpec.from_json(instance.get_run_by_id(result.run_id).tags[BUILD_TAG])
    written = instance.get_latest_materialization_event(AssetKey("milvus_collection")).asset_materialization
    assert written.metadata["collection"].value == spec.collection == served_collection(settings)
    assert written.metadata["embedding_model"].value == spec.embedding_version


def served_collection(settings: Settings) -> str | None:
    with build_resources(settings)["milvus"].store() as store:
        return store.alias_target()


def test_assets_and_one_pass_builds_write_the_same_rows(settings, instance):
    """One pipeline: the partitioned assets and build_from_sources (candidate and grid builds, benchmarks)
    produce identical rows, metadata included."""
    index(settings, instance=instance)
    resources = build_resources(settings)
    embedder, sources = resources["embedder"], resources["sources"]
    with resources["milvus"].store() as store:
        served = store.alias_target()
        model = embedder.load(store.record(served).model_reference)
        chunking = BuildSpec(model.reference, 256, 32).chunking(model.max_seq_length - 2)
        build = index_build(model, chunking)
        scratch, _ = build_from_sources(
            store,
            build,
            sources.discover(),
            model,
            embedder.cache(),
            chunking,
            sources.limits(),
            False,
            f"{store.alias}_scratch",
        )
        fields = ["chunk_id", "source_key", "text", "metadata"]
        try:
            assets_rows = sorted(store.all_rows(served, fields), key=lambda row: row["chunk_id"])
            one_pass_rows = sorted(store.all_rows(scratch, fields), key=lambda row: row["chunk_id"])
        finally:
            store.drop_collection(scratch)
    assert assets_rows and [dict(row) for row in assets_rows] == [dict(row) for row in one_pass_rows]
    assert set(assets_rows[0]["metadata"]) == {"token_count", "parser", "modified_at", "doc_hash", "redactions"}


def test_the_row_check_fails_when_the_catalog_has_no_entry_for_the_collection(settings, instance, tmp_path):
    settings = settings.model_copy(update={"eval_dataset_dir": write_fixture_dataset(tmp_path / "dataset")})
    index(settings, instance=instance)
    catalog = build_resources(settings)["catalog"].get()
    catalog.remove(list(catalog.entries()))  # rows in Milvus, nothing in the catalog to vouch for them
    result = (
        build_definitions(settings)
        .resolve_job_def("evaluation_job")
        .execute_in_process(
            instance=instance, asset_selection=[AssetKey("retrieval_eval_report")], raise_on_error=False
        )
    )
    checks = {check.check_name: check for check in result.get_asset_check_evaluations()}
    rows = checks["index_rows_match_chunks"]
    assert not result.success  # the check is blocking: a build missing rows stops the run before promotion
    assert rows.passed is False and rows.metadata["rows"].value > 0
    assert "catalog records no indexed source" in rows.metadata["reason"].value


def test_the_first_build_stems_bm25_and_a_build_from_before_keeps_its_words_as_written(settings, instance):
    """BM25 matches word forms on a new build; a served build keeps the analyzer it was made with."""
    index(settings, instance=instance)
    resources = build_resources(settings)
    engine = resources["milvus"].connection().memory_engine()
    served = engine.served()
    assert BuildRecord.from_properties(served.properties).bm25_analyzer == ENGLISH
    texts = served.searcher.row_table(["text", "source"]).to_pylist()
    assert not any("reconciling" in row["text"].lower() for row in texts)  # the corpus says "reconcile"
    found = Retriever(served.searcher).retrieve("Reconciling", None, 5, "bm25", SearchFilter(settings.default_tenant))
    assert found and all("reconcile" in chunk.text.lower() for chunk in found)
    assert {chunk.source for chunk in found} == {"getting-started.md", "release-notes.txt"}

    # A build from before the choice (its words as written) is served: indexing keeps writing it that way.
    embedder, sources = resources["embedder"], resources["sources"]
    with resources["milvus"].store() as store:
        model = embedder.load(BUNDLED_MODEL)
        chunking = BuildSpec(model.reference, 128, 16, bm25_analyzer=STANDARD).chunking(model.max_seq_length - 2)
        older, _ = build_from_sources(
            store, index_build(model, chunking), sources.discover(), model, embedder.cache(), chunking,
            sources.limits(), False,
        )  # fmt: skip
        store.point_alias(older)
    spec = embedder.decide_build()
    assert (spec.collection, spec.bm25_analyzer) == (older, STANDARD)
    older_searcher = engine.served().searcher
    assert older_searcher.analyzer == STANDARD
    assert not Retriever(older_searcher).retrieve("Reconciling", None, 5, "bm25", SearchFilter("default"))
    # Asked for, stemming builds a candidate beside it.
    asked = Settings(**{name: getattr(settings, name) for name in settings.model_fields_set}, bm25_analyzer=ENGLISH)
    candidate = build_resources(asked)["embedder"].decide_build()
    assert candidate.bm25_analyzer == ENGLISH and candidate.collection not in (older, "") and candidate.served == older
