"""The reranker end to end on the real components: the `reranker_model` asset trains a cross-encoder on the
fixture slice of SciFact (real training steps) and registers it in a real MLflow store; it loads back by its
models:/ URI; its stage reorders only the retrieved candidates, through the query engine and the served API."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from dagster import AssetKey, RunRequest, SkipReason, build_sensor_context, instance_for_test

from rag_assets.cli import index
from rag_assets.definitions import build_definitions
from rag_core.embedding import model_fingerprint
from rag_core.evaluation import EvalDataset, evaluate_engine, judged_dataset
from rag_core.models import BUNDLED_MODEL, ModelResolver, load_embedder
from rag_core.promotion import adopt_reranker, builds, promote, recorded_rerank_weights
from rag_core.query import Query, QueryEngine
from rag_core.querylog import ServingDatabase
from rag_core.rerank import HeldOutQuestions, Reranker, is_cross_encoder
from rag_core.rerank_tuning import MIN_RERANK_GAIN, WEIGHTS, RerankerGate, ndcg_at_10, score_candidates
from rag_core.retrieval import SearchFilter
from rag_core.search.engines import IndexConnection
from rag_core.tracking import REGISTERED_RERANKER, Tracker
from rag_serving.app import create_app
from tests.conftest import FIXTURES
from tests.integration.pipeline_helpers import write_fixture_dataset
from tests.serving_server import ServerThread
from tests.support.settings import embedded_settings

pytestmark = pytest.mark.slow
CANDIDATES = 8


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """The fixture corpus indexed, one relevance judgement from a user, then `reranker_job` (small preset)."""
    root = tmp_path_factory.mktemp("reranker")
    shutil.copytree(FIXTURES / "corpus", root / "documents")
    settings = embedded_settings(  # a real SQLite MLflow store under the data dir
        root,
        root / "documents",
        collection_alias="rag_chunks",
        eval_dataset_dir=write_fixture_dataset(root / "dataset"),
    )
    settings.resolved_dagster_home.mkdir(parents=True)
    with instance_for_test(temp_dir=str(settings.resolved_dagster_home)) as instance:
        index(settings, instance=instance)
        with IndexConnection.from_settings(settings).store() as store:
            collection = store.alias_target()
            (chunk_id,) = store.sample_texts(collection, 1)
        feedback = ServingDatabase(settings.resolved_serving_db_url)
        query_id = feedback.log_query(
            tenant="default",
            key_id="",
            question="Which passage did the user like?",
            mode="hybrid",
            top_k=5,
            chunk_ids=[chunk_id],
            timings_ms={},
            index_version="0",
            model="extractive/best-sentences",
        )
        feedback.add_feedback(query_id, 5, True, "this one")
        feedback.close()
        result = (
            build_definitions(settings)
            .resolve_job_def("reranker_job")
            .execute_in_process(
                instance=instance,
                run_config={"ops": {"reranker_model": {"config": {"preset": "small", "dev_fraction": 0.2}}}},
            )
        )
        assert result.success
        event = instance.get_latest_materialization_event(AssetKey("reranker_model"))
        metadata = {key: value.value for key, value in event.asset_materialization.metadata.items()}
    return {"settings": settings, "collection": collection, "metadata": metadata}


def test_reranker_trains_on_the_fixture_slice_and_registers_in_mlflow(trained: dict) -> None:
    settings, metadata = trained["settings"], trained["metadata"]
    train = EvalDataset.load(settings.eval_dataset_dir, "train")
    held_out = len(train.queries) // 5  # dev_fraction 0.2, whole questions
    assert metadata["model_uri"] == f"models:/{REGISTERED_RERANKER}/1"
    judged_pairs = sum(len(judged) for judged in train.qrels.values())
    assert metadata["examples"]["feedback"] == 1 and 0 < metadata["examples"]["qrels"] <= judged_pairs - held_out
    # every positive, at least one mined and one random negative per question
    assert metadata["train_pairs"] >= 2 * metadata["positive_pairs"] > 0
    assert [epoch["epoch"] for epoch in metadata["history"]] == [0.0, 1.0]
    assert 0.0 <= metadata["final_dev_ndcg_at_10"] <= 1.0 and "final_dev_first_stage_ndcg_at_10" in metadata
    # The gate judged it on the served build in each mode, and recorded it there for the modes it proved a gain in.
    adopted = metadata["rerank_adopted"]
    assert metadata["rerank_collection"] == trained["collection"] and set(adopted) <= {"bm25", "dense", "hybrid"}
    for mode in ("bm25", "dense", "hybrid"):
        assert metadata[f"rerank_gate_{mode}"].startswith("adopted" if mode in adopted else "not adopted")
    rows = metadata["rerank_weights"].splitlines()
    assert len(rows) == 2 + 3 and [row.split(" | ")[0] for row in rows[2:]] == ["| bm25", "| dense", "| hybrid"]
    with IndexConnection.from_settings(settings).store() as store:
        record = store.record(trained["collection"])
    assert recorded_rerank_weights(record) == adopted and (record.reranker == metadata["model_uri"]) is bool(adopted)

    tracker = Tracker.from_settings(settings)
    (run,) = tracker.runs("rerankers")
    assert run.data.params["train.max_length"] == "64" and run.data.params["examples.feedback"] == "1"
    assert run.data.tags["model_uri"] == metadata["model_uri"]
    steps = [m.step for m in tracker.client().get_metric_history(run.info.run_id, "dev_ndcg_at_10")]
    assert steps == [0, 1], "dev metrics are logged before training and after each epoch"
    assert tracker.client().get_metric_history(run.info.run_id, "train_loss")
    assert run.data.metrics["gate_hybrid_adopted"] == float("hybrid" in metadata["rerank_adopted"])
    assert run.data.tags["rerank_gate"] == metadata["rerank_gate"]
    (version,) = tracker.client().search_model_versions(f"name = '{REGISTERED_RERANKER}'")
    assert version.run_id == run.info.run_id

    # Loaded back by its URI (downloaded from MLflow into the model cache): the very weights trained.
    reranker = Reranker.from_reference(metadata["model_uri"], ModelResolver.from_settings(settings)).warm_up()
    trained_dir = Path(metadata["model_dir"])
    assert reranker.model_dir != trained_dir and is_cross_encoder(reranker.model_dir)
    assert reranker.version.endswith(f"@{model_fingerprint(trained_dir)}")
    # The questions it held out travel with it: a later build picks its weight on the same ones.
    held = HeldOutQuestions.load(reranker.model_dir)
    assert held is not None and held.dataset == "dataset/train" and len(held.query_ids) == held_out
    assert set(held.query_ids) <= set(train.queries) and metadata["held_out_questions"] == held_out
    scores = reranker.scores("Which passage did the user like?", ["a passage", "another passage"])
    assert scores.shape == (2,) and scores[0] != scores[1]


@pytest.fixture
def served(trained: dict) -> tuple:
    """(the trained reranker loaded by its URI, the base embedder, the served build's searcher)."""
    resolver = ModelResolver.from_settings(trained["settings"])
    reranker = Reranker.from_reference(trained["metadata"]["model_uri"], resolver).warm_up()
    embedder = load_embedder(BUNDLED_MODEL, resolver)
    searcher = IndexConnection.from_settings(trained["settings"]).memory_engine().searcher(trained["collection"])
    return reranker, embedder, searcher


def test_the_rerank_stage_reorders_only_the_candidates(trained: dict, served: tuple) -> None:
    settings, (reranker, embedder, searcher) = trained["settings"], served
    fusion = settings.fusion()
    stages: list[str] = []

    def encode(text: str) -> list[float]:
        return embedder.encode([text])[0].tolist()

    @contextlib.contextmanager
    def timed(name: str) -> Iterator[None]:
        stages.append(name)
        yield

    plain = QueryEngine(searcher, encode, fusion)
    reranking = QueryEngine(searcher, encode, fusion, stage=timed, reranker=reranker, rerank_candidates=CANDIDATES)
    questions = list(EvalDataset.load(settings.eval_dataset_dir, "train").queries.values())[:6]
    changed = 0
    for question in questions:
        for mode in ("bm25", "dense", "hybrid"):
            search_filter = SearchFilter(settings.default_tenant)
            candidates = plain.retrieve(Query(question, CANDIDATES, mode, search_filter))  # type: ignore[arg-type]
            deeper = plain.retrieve(Query(question, CANDIDATES + 4, mode, search_filter))  # type: ignore[arg-type]
            stages.clear()
            reranked = reranking.retrieve(Query(question, CANDIDATES, mode, search_filter))  # type: ignore[arg-type]
            assert stages == ["search", "rerank"]
            by_id = {chunk.chunk_id: chunk for chunk in candidates}
            assert sorted(by_id) == sorted(chunk.chunk_id for chunk in reranked), "the same candidates, reordered"
            for chunk in reranked:  # every field kept; the cross-encoder's score added
                assert chunk.rerank_score is not None and replace(chunk, rerank_score=None) == by_id[chunk.chunk_id]
            scores = [chunk.rerank_score for chunk in reranked]
            assert scores == sorted(scores, reverse=True)
            changed += [c.chunk_id for c in reranked] != [c.chunk_id for c in candidates]

            top = reranking.retrieve(Query(question, 3, mode, search_filter))  # type: ignore[arg-type]
            assert [c.chunk_id for c in top] == [c.chunk_id for c in reranked[:3]], "top_k cuts the reranked list"
            beyond = reranking.retrieve(Query(question, CANDIDATES + 4, mode, search_filter))  # type: ignore[arg-type]
            assert [c.chunk_id for c in beyond[:CANDIDATES]] == [c.chunk_id for c in reranked]
            assert beyond[CANDIDATES:] == deeper[CANDIDATES:], "below the candidates, retrieval's order stays"
    assert changed > 0, "the reranker changed the order of some candidate list"


def test_the_gate_scores_the_build_as_the_evaluation_does(trained: dict, served: tuple) -> None:
    """Without reranking the gate's nDCG@10 is the retrieval evaluation's; weight 1 is the cross-encoder's order."""
    settings, collection, (reranker, embedder, searcher) = trained["settings"], trained["collection"], served
    train, test = (EvalDataset.load(settings.eval_dataset_dir, split) for split in ("train", "test"))
    tuning = judged_dataset(train, searcher.doc_ids(), collection)
    gate = judged_dataset(test, searcher.doc_ids(), collection)
    gate_of = RerankerGate(searcher, embedder, settings.fusion(), reranker, tuning, gate, "default", CANDIDATES)
    verdict = gate_of.verdict("hybrid")
    evaluated = evaluate_engine(
        searcher, settings.fusion(), embedder, gate, ["hybrid"], settings.default_tenant, collection
    )
    assert verdict.without == pytest.approx(evaluated.modes["hybrid"].means["ndcg@10"], abs=1e-4)
    assert list(verdict.tuning) == list(WEIGHTS) and verdict.tuning[verdict.weight] == max(verdict.tuning.values())
    assert verdict.decision.min_effect == MIN_RERANK_GAIN and verdict.tuning_queries == len(tuning.queries)
    scored = score_candidates(searcher, embedder, settings.fusion(), reranker, tuning, "hybrid", "default", CANDIDATES)
    for candidates in scored.values():
        by_logit = sorted(range(len(candidates.logits)), key=lambda i: (-float(candidates.logits[i]), i))
        assert candidates.reordered(1.0)[: len(by_logit)] == [candidates.chunks[i] for i in by_logit]


def test_auto_serves_the_reranker_the_gate_recorded_on_the_build(trained: dict) -> None:
    """RAG_RERANK_MODEL=auto (the default): no reranking until a reranker is recorded on the served build, then
    reranking with it from the next poll, in the modes it was proven in only; `off` never reranks."""
    settings, collection = trained["settings"], trained["collection"]
    assert settings.rerank_model == "auto"
    settings = settings.model_copy(update={"rerank_candidates": CANDIDATES})
    key = ServingDatabase(settings.resolved_serving_db_url).create_key("default", "auto rerank test")
    question = {"query": "vitamin D and fractures", "top_k": 4}
    connection = IndexConnection.from_settings(settings)
    with connection.store() as store:  # whatever the asset's gate decided on the fixture: start unjudged
        adopt_reranker(store, collection, "", {})
    server = ServerThread(create_app(settings)).start()
    try:
        with server.client(key) as client:
            unjudged = client.get("/ready").json()
            plain = client.post("/v1/retrieve", json=question).json()
            with connection.store() as store:
                adopt_reranker(store, collection, trained["metadata"]["model_uri"], {"hybrid": 0.3})
                (row,) = [row for row in builds(store) if row["collection"] == collection]
            assert row["reranker"] == f"{trained['metadata']['model_uri']} (hybrid 0.3)", "`rag builds` shows it"
            server.app.state.rag.index.refresh()  # the next poll, now
            ready = client.get("/ready").json()
            reranked = client.post("/v1/retrieve", json=question).json()
            bm25 = client.post("/v1/retrieve", json={**question, "mode": "bm25"}).json()
    finally:
        server.stop()
        with connection.store() as store:
            adopt_reranker(store, collection, "", {})
    assert unjudged["reranker"] == "off" and "rerank" not in plain["timings_ms"]
    assert {chunk["rerank_score"] for chunk in plain["chunks"]} == {None}
    assert ready["reranker"].startswith(f"{REGISTERED_RERANKER}-1@") and "rerank" in reranked["timings_ms"]
    scores = [chunk["rerank_score"] for chunk in reranked["chunks"]]
    assert None not in scores and scores == sorted(scores, reverse=True)
    assert "rerank" not in bm25["timings_ms"], "not proven in bm25: not reranked there"
    assert {chunk["rerank_score"] for chunk in bm25["chunks"]} == {None}
    off = settings.model_copy(update={"rerank_model": "off"})
    with connection.store() as store:
        adopt_reranker(store, collection, trained["metadata"]["model_uri"], {"hybrid": 0.3})
    server = ServerThread(create_app(off)).start()
    try:
        with server.client(key) as client:
            assert client.get("/ready").json()["reranker"] == "off"
            assert "rerank" not in client.post("/v1/retrieve", json=question).json()["timings_ms"]
    finally:
        server.stop()
        with connection.store() as store:
            adopt_reranker(store, collection, "", {})


def test_the_served_api_reranks_and_times_the_stage(trained: dict) -> None:
    settings = trained["settings"].model_copy(
        update={"rerank_model": trained["metadata"]["model_uri"], "rerank_candidates": CANDIDATES}
    )
    key = ServingDatabase(settings.resolved_serving_db_url).create_key("default", "rerank test")
    server = ServerThread(create_app(settings)).start()
    try:
        with server.client(key) as client:
            ready = client.get("/ready").json()
            body = client.post("/v1/retrieve", json={"query": "vitamin D and fractures", "top_k": 4}).json()
    finally:
        server.stop()
    assert ready["status"] == "ready" and ready["reranker"].startswith(f"{REGISTERED_RERANKER}-1@")
    assert len(body["chunks"]) == 4 and {"embed", "search", "rerank"} <= set(body["timings_ms"])
    scores = [chunk["rerank_score"] for chunk in body["chunks"]]
    assert None not in scores and scores == sorted(scores, reverse=True)


def test_the_evaluation_measures_the_served_build_reranked_as_the_api_serves_it(
    trained: dict, served: tuple, tmp_path: Path
) -> None:
    """A build served with a reranker is measured both ways: its first stage (what the promotion gate compares)
    and, in the modes it is reranked in, reranked as the API serves it — the figure the reranker gate computed for
    that weight. With RAG_RERANK_MODEL=off nothing is reranked, in the API or the report."""
    settings, collection, (reranker, embedder, searcher) = trained["settings"], trained["collection"], served
    settings = settings.model_copy(update={"eval_tune_fusion": False})  # the served fusion stays the default
    uri = trained["metadata"]["model_uri"]
    connection = IndexConnection.from_settings(settings)
    with connection.store() as store:
        adopt_reranker(store, collection, uri, {"hybrid": 0.3})
    try:
        with instance_for_test(temp_dir=str(tmp_path)) as instance:
            definitions = build_definitions(settings)
            assert definitions.resolve_job_def("evaluation_job").execute_in_process(instance=instance).success
            report = _latest(instance, "retrieval_eval_report")
            tracker = Tracker.from_settings(settings)
            off = build_definitions(settings.model_copy(update={"rerank_model": "off"}))
            assert off.resolve_job_def("evaluation_job").execute_in_process(instance=instance).success
            unreranked = _latest(instance, "retrieval_eval_report")
    finally:
        with connection.store() as store:
            adopt_reranker(store, collection, "", {})
    assert report["reranked_as_served"] == {"served": f"{reranker.version} in hybrid (weight 0.3)"}
    assert not any(key.startswith(("served_bm25_reranked", "served_dense_reranked")) for key in report)
    gate = judged_dataset(EvalDataset.load(settings.eval_dataset_dir, "test"), searcher.doc_ids(), collection)
    scored = score_candidates(
        searcher, embedder, settings.fusion(), reranker, gate, "hybrid", "default", settings.rerank_candidates
    )
    reordered, _ = ndcg_at_10(gate, {query_id: c.reordered(0.3) for query_id, c in scored.items()})
    assert report["served_hybrid_reranked_ndcg_at_10"] == pytest.approx(reordered, abs=1e-4)
    assert report["served_hybrid_ndcg_at_10"] == unreranked["served_hybrid_ndcg_at_10"], "the first stage, as before"
    assert "| hybrid reranked, as served |" in report["report"]
    hybrid_runs = [run for run in tracker.runs("retrieval") if run.data.params.get("reranker")]
    assert hybrid_runs and {run.data.params["mode"] for run in hybrid_runs} == {"hybrid"}
    assert hybrid_runs[0].data.metrics["reranked_ndcg_at_10"] == pytest.approx(reordered, abs=1e-4)
    assert unreranked["reranked_as_served"] == {} and "served_hybrid_reranked_ndcg_at_10" not in unreranked


def _latest(instance, asset_name: str) -> dict:
    event = instance.get_latest_materialization_event(AssetKey(asset_name))
    return {key: value.value for key, value in event.asset_materialization.metadata.items()}


def test_a_promotion_has_the_reranker_it_left_behind_judged_on_the_new_build(trained: dict, tmp_path: Path) -> None:
    """The served build reranks; a promotion replaces it (real candidate build, real gate: the tolerance rule an
    A/B winner faces, with a margin any build passes). `promoted_index` names the reranker left behind,
    `rerank_after_promotion_sensor` asks for a judge-only `reranker_job` run, and that run judges the same model
    on the new build — on the questions it held out, training nothing — without undoing one proven there since."""
    settings = trained["settings"].model_copy(update={"eval_gate_margin": 1.0})
    uri, first = trained["metadata"]["model_uri"], trained["collection"]
    connection = IndexConnection.from_settings(settings)
    tracker = Tracker.from_settings(settings)
    with connection.store() as store:
        adopt_reranker(store, first, uri, {"hybrid": 0.3})
    definitions = build_definitions(settings)
    sensor = definitions.resolve_sensor_def("rerank_after_promotion_sensor")
    try:
        with instance_for_test(temp_dir=str(tmp_path)) as instance:
            tick = build_sensor_context(instance=instance, definitions=definitions)
            assert isinstance(sensor(tick), SkipReason), "nothing promoted yet"
            built = definitions.resolve_job_def("candidate_job").execute_in_process(
                instance=instance, run_config={"ops": {"candidate_index": {"config": {"chunk_max_tokens": 96}}}}
            )
            assert built.success
            promoted = definitions.resolve_job_def("promote_job").execute_in_process(
                instance=instance,
                run_config={"ops": {"retrieval_eval_report": {"config": {"target": "candidate", "rule": "tolerance"}}}},
            )
            assert promoted.success
            promotion = _latest(instance, "promoted_index")
            new = promotion["served_collection"]
            assert new != first and promotion["previous_collection"] == first
            assert promotion["rejudge_reranker"] == uri
            assert promotion["reranker"].startswith(f"none yet: {uri} reranked hybrid on {first}")

            tick = build_sensor_context(instance=instance, definitions=definitions)
            request = sensor(tick)
            assert isinstance(request, RunRequest)
            assert request.run_config == {"ops": {"reranker_model": {"config": {"judge": uri}}}}
            again = build_sensor_context(instance=instance, cursor=tick.cursor, definitions=definitions)
            assert isinstance(sensor(again), SkipReason), "one judgement per promotion"

            judge = definitions.resolve_job_def("reranker_job")
            judged = judge.execute_in_process(instance=instance, run_config=request.run_config, tags=request.tags)
            assert judged.success
            metadata = _latest(instance, "reranker_model")
            assert metadata["judged_only"] and metadata["model_uri"] == uri and metadata["rerank_collection"] == new
            assert metadata["held_out_questions"] == trained["metadata"]["held_out_questions"]
            for mode in ("bm25", "dense", "hybrid"):
                assert metadata[f"rerank_gate_{mode}"].startswith(
                    "adopted" if mode in metadata["rerank_adopted"] else "not adopted"
                )
            with connection.store() as store:
                record = store.record(new)
            assert recorded_rerank_weights(record) == metadata["rerank_adopted"]
            assert (record.reranker == uri) is bool(metadata["rerank_adopted"])
            versions = tracker.client().search_model_versions(f"name = '{REGISTERED_RERANKER}'")
            assert [str(version.version) for version in versions] == ["1"], "judging trains and registers nothing"
            (judge_run,) = [run for run in tracker.runs("rerankers") if run.data.tags.get("judged_model") == uri]
            assert judge_run.data.tags["rerank_gate"] == metadata["rerank_gate"]
            assert set(judge_run.data.metrics) >= {"gate_hybrid_weight", "gate_hybrid_adopted"}

            # A reranker proven on the new build since the judgement was asked for is never undone by it.
            with connection.store() as store:
                adopt_reranker(store, new, "models:/rag-reranker/9", {"dense": 0.5})
            assert judge.execute_in_process(instance=instance, run_config=request.run_config).success
            with connection.store() as store:
                record = store.record(new)
            assert record.reranker == "models:/rag-reranker/9" and recorded_rerank_weights(record) == {"dense": 0.5}
            if metadata["rerank_adopted"]:
                assert "not recorded: the build serves models:/rag-reranker/9" in _latest(instance, "reranker_model")[
                    "rerank_gate"
                ]
    finally:
        with connection.store() as store:
            promote(store, first, ndcg=None)
            adopt_reranker(store, first, "", {})
