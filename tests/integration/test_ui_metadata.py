"""What the Dagster and MLflow UIs show, read back from a real Dagster instance and a real MLflow store:
each partition's own counts and a preview of its chunks, the evaluation report with its plot embedded,
links to the MLflow runs, and MLflow runs that keep their model's name, split the fusion into params,
carry the judged queries as a dataset input and link back to their Dagster run and asset."""

from __future__ import annotations

import base64
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from dagster import AssetKey, AssetRecordsFilter, DagsterInstance, UrlMetadataValue, instance_for_test

from rag_assets.cli import index
from rag_assets.definitions import build_definitions
from rag_assets.reporting import latest_metadata
from rag_core.ids import source_key
from rag_core.settings import Settings
from rag_core.tracking import MODEL_TRAINING, Tracker
from tests.conftest import FIXTURES
from tests.integration.pipeline_helpers import write_fixture_dataset
from tests.support.settings import embedded_settings

pytestmark = pytest.mark.slow
MLFLOW_UI = "http://mlflow.example:5000"
DAGSTER_UI = "http://dagster.example:3000"


@dataclass
class Evaluated:
    settings: Settings
    instance: DagsterInstance
    summary: dict
    eval_run_id: str


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory) -> Iterator[Evaluated]:
    """The fixture corpus indexed in one run (six partitions, one a 12-record .jsonl), then the retrieval
    evaluation of the served build."""
    root = tmp_path_factory.mktemp("ui-metadata")
    shutil.copytree(FIXTURES / "corpus", root / "documents")
    settings = embedded_settings(
        root,
        root / "documents",
        collection_alias="rag_chunks",
        eval_dataset_dir=write_fixture_dataset(root / "dataset"),
        eval_tune_fusion=False,
        mlflow_ui_url=MLFLOW_UI,
        dagster_ui_url=DAGSTER_UI,
    )
    (root / "dagster").mkdir()
    with instance_for_test(temp_dir=str(root / "dagster")) as instance:
        summary = index(settings, instance=instance)
        evaluation = (
            build_definitions(settings)
            .resolve_job_def("evaluation_job")
            .execute_in_process(instance=instance, asset_selection=[AssetKey("retrieval_eval_report")])
        )
        assert evaluation.success
        yield Evaluated(settings, instance, summary, evaluation.run_id)


def partition_metadata(instance: DagsterInstance, asset: str, partition: str) -> dict:
    """The metadata of the partition's latest materialization, as the asset page shows it."""
    (record,) = instance.fetch_materializations(
        AssetRecordsFilter(asset_key=AssetKey(asset), asset_partitions=[partition]), limit=1
    ).records
    return {key: value.value for key, value in record.asset_materialization.metadata.items()}


def test_each_partition_of_a_batched_run_reports_its_own_counts(evaluated: Evaluated) -> None:
    instance, summary = evaluated.instance, evaluated.summary
    keys = instance.get_dynamic_partitions("documents")
    assert len(keys) == summary["partitions"] == 6
    raw = {key: partition_metadata(instance, "raw_documents", key) for key in keys}
    chunks = {key: partition_metadata(instance, "document_chunks", key) for key in keys}
    vectors = {key: partition_metadata(instance, "chunk_embeddings", key) for key in keys}
    written = {key: partition_metadata(instance, "milvus_collection", key) for key in keys}
    jsonl, markdown = source_key("abstracts.jsonl"), source_key("getting-started.md")

    assert raw[jsonl]["documents"] == 12 and raw[markdown]["documents"] == 1
    assert raw[jsonl]["source"] == "abstracts.jsonl" and raw[markdown]["parsers"] == {"markdown-it": 1}
    assert sum(meta["documents"] for meta in raw.values()) == summary["documents"] == 17
    assert {meta["run_documents"] for meta in raw.values()} == {17}  # the run's total rides beside
    assert chunks[jsonl]["chunks"] != chunks[markdown]["chunks"]
    assert sum(meta["chunks"] for meta in chunks.values()) == summary["chunks"]
    for key in keys:
        rows = chunks[key]["chunks"] + chunks[key]["document_entries"]  # one whole-text entry per document
        assert chunks[key]["document_entries"] == raw[key]["documents"]
        assert vectors[key]["computed"] == chunks[key]["chunks"] and vectors[key]["vectors"] == rows  # a first build
        assert written[key]["partition_rows"] == written[key]["rows_inserted"] == rows
        assert written[key]["rows_deleted"] == 0 and written[key]["run_rows_inserted"] == summary["vectors"]


def test_document_chunks_shows_a_preview_table_of_the_partition_chunks(evaluated: Evaluated) -> None:
    key = source_key("getting-started.md")
    event = evaluated.instance.fetch_materializations(
        AssetRecordsFilter(asset_key=AssetKey("document_chunks"), asset_partitions=[key]), limit=1
    ).records[0]
    preview = event.asset_materialization.metadata["preview"]
    assert [column.name for column in preview.schema.columns] == ["position", "doc_id", "tokens", "chars", "text"]
    rows = [record.data for record in preview.records]
    assert 0 < len(rows) <= 5 and [row["position"] for row in rows] == list(range(len(rows)))
    assert {row["doc_id"] for row in rows} == {key}
    assert "Dagster partition" in " ".join(row["text"] for row in rows)
    assert rows[0]["tokens"] > 0 and re.fullmatch(r"\d+–\d+", rows[0]["chars"])


def test_the_report_embeds_its_plot_and_links_the_mlflow_runs(evaluated: Evaluated) -> None:
    event = evaluated.instance.get_latest_materialization_event(AssetKey("retrieval_eval_report"))
    metadata = event.asset_materialization.metadata
    report = metadata["report"].value
    assert "](ndcg_by_mode.png)" not in report  # a path the browser cannot resolve: the broken image
    encoded = re.search(r"!\[nDCG@10 per mode\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", report)
    assert encoded and base64.b64decode(encoded.group(1)).startswith(b"\x89PNG\r\n\x1a\n")

    run_ids = metadata["mlflow_runs"].value
    links = {key: value for key, value in metadata.items() if key.startswith("mlflow_run ")}
    assert len(links) == len(run_ids) == 3  # one per mode of the served build
    assert all(isinstance(link, UrlMetadataValue) for link in links.values())
    experiment = Tracker.from_settings(evaluated.settings).experiment_id("retrieval")
    assert {link.url for link in links.values()} == {
        f"{MLFLOW_UI}/#/experiments/{experiment}/runs/{run_id}" for run_id in run_ids.values()
    }


def test_mlflow_runs_name_the_model_split_the_fusion_log_the_dataset_and_link_back(evaluated: Evaluated) -> None:
    tracker = Tracker.from_settings(evaluated.settings)
    runs = tracker.runs("retrieval")
    report = latest_metadata(evaluated.instance, "retrieval_eval_report")
    assert {run.info.run_name for run in runs} == set(report["mlflow_runs"])
    assert tracker.client().get_experiment_by_name("retrieval").tags["mlflow.experimentKind"] == MODEL_TRAINING
    for run in runs:
        mode = run.data.params["mode"]
        assert run.info.run_name == f"served:{mode}:all-MiniLM-L6-v2:tokens256-overlap32-docs-stem"
        params = run.data.params
        assert "fusion" not in params
        assert (params["fusion_method"], float(params["dense_weight"]), float(params["bm25_weight"])) == (
            "convex",
            0.55,
            0.45,
        )
        assert int(params["fusion_candidates"]) == 100 and int(params["rrf_k"]) == 60
        tags = run.data.tags
        assert tags["dagster.run_id"] == evaluated.eval_run_id
        assert tags["dagster.asset_key"] == "retrieval_eval_report"
        assert tags["dagster.run_url"] == f"{DAGSTER_UI}/runs/{evaluated.eval_run_id}"
        assert tags["dagster.run_url"] in tags["mlflow.note.content"]
        (dataset_input,) = run.inputs.dataset_inputs
        assert {tag.key: tag.value for tag in dataset_input.tags}["mlflow.data.context"] == "evaluation"
        assert dataset_input.dataset.name == "dataset/test"  # the folder's name and the evaluated split
        assert f'"num_rows": {report["queries"]}' in dataset_input.dataset.profile
