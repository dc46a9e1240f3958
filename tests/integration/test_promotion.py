"""Evaluation, fine-tuning and gated blue/green promotion, end to end on the real components: Dagster
in-process runs on a real instance, Milvus Lite, real training steps, a real MLflow store in a temp dir.

The served index starts on a deliberately damaged model (the base MiniLM with its weights scrambled), so
"better" and "worse" are not a matter of luck on a dozen documents: the fine-tuned candidate must beat it
and move the alias; the damaged model with new chunking must be refused; rollback restores the old build.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from dagster import AssetKey, DagsterInstance, instance_for_test

from rag_assets.cli import builds, index, promote, rollback
from rag_assets.definitions import build_definitions
from rag_assets.resources import build_resources
from rag_core.querylog import ServingDatabase
from rag_core.settings import Settings, bundled_model_dir
from rag_core.tracking import REGISTERED_EMBEDDER, Tracker
from rag_serving.state import ServingState
from tests.conftest import FIXTURES
from tests.integration.pipeline_helpers import write_fixture_dataset
from tests.support.waiting import wait_for

pytestmark = pytest.mark.slow


def damaged_model(folder: Path) -> Path:
    """The base model with every weight shuffled: a deliberately worse embedding model."""
    import torch
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(bundled_model_dir()), device="cpu", local_files_only=True)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for parameter in model.parameters():
            flat = parameter.view(-1)
            flat.copy_(flat[torch.randperm(flat.numel(), generator=generator)])
    model.save(str(folder))
    return folder


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("promotion")
    shutil.copytree(FIXTURES / "corpus", root / "documents")
    return {
        "root": root,
        "dataset": write_fixture_dataset(root / "dataset"),
        "damaged": damaged_model(root / "damaged-minilm"),
    }


def settings_for(workspace: dict, **overrides) -> Settings:
    root = workspace["root"]
    return Settings(
        data_dir=root / "data",
        documents_dir=root / "documents",
        dagster_home=root / "dagster",
        milvus_uri="",
        catalog_url="",
        serving_db_url="",
        mlflow_tracking_uri="",
        collection_alias="rag_chunks",
        eval_dataset_dir=workspace["dataset"],
        eval_gate_mode="dense",
        eval_gate_margin=0.01,
        **overrides,
    )


def served_collection(settings: Settings) -> str | None:
    with build_resources(settings)["milvus"].store() as store:
        return store.alias_target()


def test_eval_finetune_and_gated_promotion(workspace: dict) -> None:
    damaged_settings = settings_for(workspace, embedding_model=str(workspace["damaged"]))
    settings = settings_for(workspace)  # no model pinned: indexing follows the served build's model
    tracker = Tracker.from_settings(settings)
    (workspace["root"] / "dagster").mkdir(exist_ok=True)
    with instance_for_test(temp_dir=str(workspace["root"] / "dagster")) as instance:
        # The first build has nothing to be compared with: it is published.
        index(damaged_settings, instance=instance)
        first = served_collection(settings)
        assert first and "damaged_minilm" in first

        # The evaluation job on the served index: metrics per mode, both checks, MLflow runs, ragas.
        definitions = build_definitions(settings)
        evaluation = definitions.resolve_job_def("evaluation_job").execute_in_process(instance=instance)
        assert evaluation.success
        report = _metadata(instance, "retrieval_eval_report")
        assert report["evaluated_collection"] == first and report["gate_passed"] is True
        assert 0.0 <= report["served_dense_ndcg_at_10"] <= 1.0 and report["queries"] > 0
        assert Path(report["report_path"]).read_text().startswith("# Retrieval evaluation")
        recorded = {row["collection"]: row["ndcg_at_10"] for row in builds(settings)}
        assert float(recorded[first]) == pytest.approx(report["ndcg_at_10"])  # the baseline later evals hold
        checks = {c.check_name: c.passed for c in evaluation.get_asset_check_evaluations()}
        assert checks == {"ndcg_within_margin_of_promoted": True, "index_rows_match_chunks": True}
        assert {run.data.params["mode"] for run in tracker.runs("retrieval")} == {"bm25", "dense", "hybrid"}
        rag_report = _metadata(instance, "rag_eval_report")
        assert 0.0 <= rag_report["id_based_context_recall"] <= 1.0
        assert [run.data.params["collection"] for run in tracker.runs("rag")] == [first]

        # A user marked an answer relevant: its question and chunk become a training pair.
        with build_resources(settings)["milvus"].store() as store:
            (chunk_id,) = store.sample_texts(first, 1)
        feedback = ServingDatabase(settings.resolved_serving_db_url)
        query_id = feedback.log_query(
            tenant="default", key_id="", question="Which passage did the user like?", mode="hybrid", top_k=5,
            chunk_ids=[chunk_id], timings_ms={}, index_version="0", model="extractive/best-sentences",
        )
        feedback.add_feedback(query_id, 5, True, "exactly this")
        serving = ServingState(settings)  # a running server: it must follow the promotion without a restart
        ready = wait_for("the server resolves the served build", lambda: serving.readiness()[0], timeout_s=120)
        assert ready.embedding_version.startswith("damaged-minilm@")

        # Fine-tune (real training steps) → registered model → candidate build → gate → promotion.
        finetuned = definitions.resolve_job_def("finetune_and_promote_job").execute_in_process(
            instance=instance,
            run_config={
                "ops": {
                    "finetuned_embedding_model": {
                        "config": {"preset": "small", "mining": "bm25", "dev_corpus_size": 12}
                    }
                }
            },
        )
        assert finetuned.success
        model = _metadata(instance, "finetuned_embedding_model")
        assert model["model_uri"] == f"models:/{REGISTERED_EMBEDDER}/1"
        (training_run,) = tracker.runs("embeddings")
        assert training_run.data.params["examples.qrels"] == str(model["examples"]["qrels"])
        assert model["examples"]["feedback"] == 1
        history = tracker.client().get_metric_history(training_run.info.run_id, "train_loss")
        assert history, "per-epoch metrics are logged"
        versions = tracker.client().search_model_versions(f"name = '{REGISTERED_EMBEDDER}'")
        assert [str(version.version) for version in versions] == ["1"]
        promoted = served_collection(settings)
        assert promoted != first and "rag_embedder_1" in promoted
        gate = _metadata(instance, "retrieval_eval_report")
        assert gate["candidate_dense_ndcg_at_10"] > gate["served_dense_ndcg_at_10"]
        serving.index.refresh()
        snapshot = serving.index.current()
        assert snapshot.collection == promoted and snapshot.embedder.version.startswith("rag-embedder-1@")
        serving.close()

        # Incremental indexing now writes the promoted build, with the fine-tuned model.
        (workspace["root"] / "documents" / "new-note.md").write_text("# Zebra migration\n\nZebras cross rivers.")
        index(settings, instance=instance)
        with build_resources(settings)["milvus"].store() as store:
            assert store.alias_target() == promoted
            assert "new-note-md" in " ".join(store.rows_by_source(promoted))

        # A deliberately worse candidate is refused by the gate: the alias does not move.
        outcome = promote(
            settings, model=str(workspace["damaged"]), chunk_max_tokens=128, chunk_overlap_tokens=16, instance=instance
        )
        assert outcome["promoted"] is False and "below" in outcome["gate"]
        assert served_collection(settings) == promoted
        statuses = {row["collection"]: row["status"] for row in builds(settings)}
        assert statuses[outcome["evaluated"]] == "rejected"

        # Rollback restores the build served before the promotion.
        assert rollback(settings) == (promoted, first)
        assert served_collection(settings) == first


def _metadata(instance: DagsterInstance, asset: str) -> dict:
    event = instance.get_latest_materialization_event(AssetKey(asset))
    return {key: value.value for key, value in event.asset_materialization.metadata.items()}
