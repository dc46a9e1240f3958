"""A model update that runs itself, end to end on the real components: users' relevance feedback through the
real API on a real port, `model_update_sensor` evaluated against a real Dagster instance, the run it requests
executed in-process (a real fine-tune with the `small` preset, logged to MLflow's file store; a candidate
collection in Milvus Lite; the gate), the A/B test it starts, simulated users in it, `experiment_decision_sensor`
and `experiment_report` promoting the candidate, and the running API following without a restart.

The served build is the base model with scrambled weights (as in the promotion test), so the fine-tuned
candidate is better for a reason and not by luck: users judge an answer relevant when its first chunk comes
from a document SciFact judges relevant to the question, and the candidate earns its win."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest
from dagster import (
    DagsterInstance,
    RunRequest,
    SkipReason,
    build_schedule_context,
    build_sensor_context,
    instance_for_test,
)

from rag_assets.assets.model_update import (
    CANDIDATE_TAG,
    EXPERIMENT_TAG,
    FAILED_TAG,
    GATE_TAG,
    MLFLOW_RUN_TAG,
    PAIRS_TAG,
    UPDATE_TAG,
)
from rag_assets.cli import index
from rag_assets.definitions import build_definitions
from rag_assets.reporting import latest_metadata
from rag_core.querylog import ServingDatabase
from rag_core.settings import Settings
from rag_core.tracking import Tracker
from rag_serving.app import create_app
from tests.conftest import FIXTURES
from tests.integration.pipeline_helpers import measured, write_fixture_dataset
from tests.integration.test_promotion import damaged_model, served_collection
from tests.serving_server import ServerThread
from tests.support.settings import embedded_settings
from tests.support.simulated_users import judged_questions
from tests.support.waiting import wait_for

pytestmark = pytest.mark.slow
ADMIN = {"X-Admin-Key": "test-admin-key-for-updates"}
THRESHOLD = 4  # relevant answers that start an update
MIN_SAMPLES = 50  # judged answers per arm before the A/B test decides
# Seconds, not minutes: the small preset on a slice of the train queries, hard negatives from BM25.
SMALL_FINETUNE = {"preset": "small", "mining": "bm25", "dev_corpus_size": 12, "max_train_queries": 12}


def tick(settings: Settings, instance: DagsterInstance, name: str) -> RunRequest | SkipReason:
    definitions = build_definitions(settings)
    with build_sensor_context(instance=instance, resources=definitions.resources, definitions=definitions) as context:
        return definitions.resolve_sensor_def(name)(context)


def with_small_finetune(run_config: dict) -> dict:
    ops = dict(run_config.get("ops", {}))
    finetune = ops.get("finetuned_embedding_model", {}).get("config", {})
    ops["finetuned_embedding_model"] = {"config": {**finetune, **SMALL_FINETUNE}}
    return {**run_config, "ops": ops}


@pytest.fixture
def lab(tmp_path) -> Iterator[dict]:
    """The scrambled build served by a running API, and a Dagster instance."""
    shutil.copytree(FIXTURES / "corpus", tmp_path / "documents")
    dataset_dir = write_fixture_dataset(tmp_path / "dataset")
    settings = embedded_settings(
        tmp_path,
        tmp_path / "documents",
        eval_dataset_dir=dataset_dir,
        eval_modes=["dense"],
        eval_gate_mode="dense",
        eval_tune_fusion=False,  # fusion tuning is not what this test is about
        rate_limit_per_minute=100_000,
        alias_poll_s=0.5,
        admin_key=ADMIN["X-Admin-Key"],
        auto_update_min_pairs=THRESHOLD,
        auto_update_action="experiment",
        auto_update_experiment_min_samples=MIN_SAMPLES,
        # Retrieval latency on a CI machine shared with other jobs is noise at a dozen samples per arm.
        auto_update_experiment_guardrails=["degraded_rate"],
    )
    settings.resolved_dagster_home.mkdir(parents=True)
    scrambled = settings.model_copy(update={"embedding_model": str(damaged_model(tmp_path / "scrambled-minilm"))})
    with instance_for_test(temp_dir=str(settings.resolved_dagster_home)) as instance:
        index(scrambled, instance=instance)
        database = ServingDatabase(settings.resolved_serving_db_url)
        key = database.create_key("default", "simulated users")
        database.close()
        server = ServerThread(create_app(settings)).start()
        try:
            yield {
                "settings": settings,
                "instance": instance,
                "server": server,
                "key": key,
                "served": served_collection(settings),
                "questions": judged_questions(dataset_dir),
            }
        finally:
            server.stop()


def judge_answers(lab: dict, users: range, relevant: bool | None = None) -> dict[str, list[bool]]:
    """Each user asks one question through /v1/retrieve and judges it: as given, or (None) relevant when the
    first chunk is on a document judged relevant to the question. Returns the judgements per arm."""
    judged: dict[str, list[bool]] = {}
    with lab["server"].client(lab["key"]) as client:
        for user in users:
            question, relevant_docs = lab["questions"][user % len(lab["questions"])]
            body = {"query": question, "user_id": f"user-{user}", "mode": "dense", "top_k": 3}
            found = client.post("/v1/retrieve", json=body).json()
            verdict = found["chunks"][0]["doc_id"] in relevant_docs if relevant is None else relevant
            response = client.post("/v1/feedback", json={"query_id": found["query_id"], "is_relevant": verdict})
            assert response.status_code == 201, response.text
            judged.setdefault(found["experiment"] and found["arm"] or "none", []).append(verdict)
    return judged


def test_feedback_starts_an_update_that_users_decide_and_the_api_follows(lab) -> None:
    settings, instance, served = lab["settings"], lab["instance"], lab["served"]
    definitions = build_definitions(settings)

    # Below the threshold nothing starts; an answer judged not relevant is no training pair.
    judge_answers(lab, range(0, THRESHOLD - 1), relevant=True)
    judge_answers(lab, range(100, 102), relevant=False)
    below = tick(settings, instance, "model_update_sensor")
    assert isinstance(below, SkipReason)
    assert f"{THRESHOLD - 1} training pairs" in below.skip_message and f"starts at {THRESHOLD}" in below.skip_message

    # The threshold reached: one update requested, under the same run key however often the sensor ticks.
    judge_answers(lab, range(THRESHOLD - 1, THRESHOLD), relevant=True)
    request = tick(settings, instance, "model_update_sensor")
    assert isinstance(request, RunRequest) and request.job_name == "model_update_experiment_job"
    assert request.tags[UPDATE_TAG] == "pairs" and request.tags[PAIRS_TAG] == str(THRESHOLD)
    assert tick(settings, instance, "model_update_sensor").run_key == request.run_key
    job = definitions.resolve_job_def(request.job_name)

    # A failed update: the run fails with its reason on the run (the alert sends the tags); nothing moved.
    broken = with_small_finetune(request.run_config)
    broken["ops"]["finetuned_embedding_model"]["config"]["base_model"] = "no-such-model"
    failed = job.execute_in_process(run_config=broken, tags=request.tags, instance=instance, raise_on_error=False)
    assert not failed.success
    assert "no-such-model" in instance.get_run_by_id(failed.run_id).tags[FAILED_TAG]
    assert served_collection(settings) == served
    assert tick(settings, instance, "model_update_sensor").run_key == request.run_key  # no fine-tune: same update

    # The update: fine-tune (MLflow) → candidate build → gate (tolerance, for an A/B test) → experiment.
    update = job.execute_in_process(
        run_config=with_small_finetune(request.run_config), tags=request.tags, instance=instance,
        raise_on_error=False,
    )
    gate = latest_metadata(instance, "retrieval_eval_report")
    assert update.success, measured(gate.get("gate_measured"), settings)
    tags = instance.get_run_by_id(update.run_id).tags
    (training_run,) = Tracker.from_settings(settings).runs("embeddings")
    assert tags[MLFLOW_RUN_TAG] == training_run.info.run_id
    assert latest_metadata(instance, "finetuned_embedding_model")["examples"]["feedback"] == THRESHOLD
    candidate = tags[CANDIDATE_TAG]
    assert gate["evaluated_collection"] == candidate and gate["gate_rule"] == "tolerance" and gate["gate_passed"]
    assert tags[GATE_TAG] == gate["gate_reason"][:200]
    experiment = tags[EXPERIMENT_TAG]
    with lab["server"].client() as admin:
        listed = admin.get("/v1/admin/experiments", headers=ADMIN).json()["experiments"]
    (running,) = [found for found in listed if found["status"] == "running"]
    assert running["name"] == experiment
    assert {arm["name"]: arm["collection"] for arm in running["arms"]} == {"served": served, "candidate": candidate}
    assert served_collection(settings) == served  # users decide before the alias moves

    # While the A/B test runs no other update starts; too few judgements for a decision yet.
    assert "is running" in tick(settings, instance, "model_update_sensor").skip_message
    early = tick(settings, instance, "experiment_decision_sensor")
    assert isinstance(early, SkipReason) and f"each arm needs {MIN_SAMPLES}" in early.skip_message

    # Users in the experiment; the candidate earns the higher relevance rate.
    judged: dict[str, list[bool]] = {"served": [], "candidate": []}
    for user in range(1000, 1400, 10):
        for arm, found in judge_answers(lab, range(user, user + 10)).items():
            judged[arm] += found
        if min(len(found) for found in judged.values()) >= MIN_SAMPLES:
            break
    assert sum(judged["candidate"]) / len(judged["candidate"]) > sum(judged["served"]) / len(judged["served"])

    # The decision: experiment_report ships the candidate past the gate and stops the experiment.
    decide = tick(settings, instance, "experiment_decision_sensor")
    assert isinstance(decide, RunRequest) and decide.tags[EXPERIMENT_TAG] == experiment
    report = definitions.resolve_job_def("experiment_decision_job").execute_in_process(
        run_config=decide.run_config, tags=decide.tags, instance=instance
    )
    assert report.success
    decision = latest_metadata(instance, "experiment_report")
    assert decision["verdict"] == "ship" and decision["winner"] == "candidate", decision["reasons"]
    assert decision["promoted"] is True and decision["stopped"] is True
    assert served_collection(settings) == candidate

    # The running API follows the alias at its next poll, without a restart, outside any experiment.
    with lab["server"].client(lab["key"]) as client:
        wait_for("the API serves the candidate", lambda: client.get("/ready").json()["collection"] == candidate)
        after = client.post("/v1/retrieve", json={"query": lab["questions"][0][0], "user_id": "user-1"}).json()
    assert after["experiment"] is None
    assert isinstance(tick(settings, instance, "experiment_decision_sensor"), SkipReason)

    # The users' judgements in the A/B test are new pairs: the next update, set to promote at once, must beat
    # the served build offline (the improvement rule). A retrained twin cannot: refused, with the reason, and
    # the alias stays.
    promoting = settings.model_copy(update={"auto_update_action": "promote"})
    second = tick(promoting, instance, "model_update_sensor")
    assert isinstance(second, RunRequest) and second.job_name == "model_update_promote_job"
    assert second.run_key != request.run_key
    rejected = build_definitions(promoting).resolve_job_def(second.job_name).execute_in_process(
        run_config=with_small_finetune(second.run_config), tags=second.tags, instance=instance, raise_on_error=False
    )
    assert not rejected.success
    gate = latest_metadata(instance, "retrieval_eval_report")
    assert gate["gate_rule"] == "improvement" and gate["gate_passed"] is False
    assert gate["gate_reason"] in instance.get_run_by_id(rejected.run_id).tags[FAILED_TAG]
    assert served_collection(settings) == candidate

    # The weekly schedule starts the same update, but not in a week without a single new pair.
    schedule = definitions.resolve_schedule_def("model_update_schedule")
    with build_schedule_context(instance=instance, resources=definitions.resources) as context:
        quiet_week = schedule.evaluate_tick(context)
    assert not quiet_week.run_requests and "nothing new to learn from" in quiet_week.skip_message
