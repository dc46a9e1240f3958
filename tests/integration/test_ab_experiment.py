"""An A/B test end to end on the fixture index, on the real components: the served build and a deliberately
worse one (the base model with scrambled weights, as in the promotion test) in Milvus Lite, the real API on a
real HTTP port, simulated users sending queries and feedback through it, the `experiment_report` asset in
an in-process Dagster run on a real instance, and MLflow's file-backed store.

Users judge an answer relevant when its first chunk comes from a document SciFact judges relevant to the
question, so the worse build earns its lower relevance; they rate 5 or 2 and name the chunk they clicked."""

from __future__ import annotations

import itertools
import shutil
from collections.abc import Callable

import httpx
import pytest
from dagster import instance_for_test
from prometheus_client.parser import text_string_to_metric_families

from rag_assets.cli import builds, index, promote
from rag_assets.experiment_cli import report
from rag_core.promotion import CANDIDATE
from rag_core.querylog import ServingDatabase
from rag_core.search.engines import IndexConnection
from rag_core.tracking import Tracker
from rag_serving.app import create_app
from tests.conftest import FIXTURES
from tests.integration.pipeline_helpers import measured, write_fixture_dataset
from tests.integration.test_promotion import damaged_model, served_collection
from tests.serving_server import ServerThread
from tests.support.settings import embedded_settings
from tests.support.simulated_users import judged_questions

pytestmark = pytest.mark.slow
ADMIN_KEY = "test-admin-key-for-experiments"
ADMIN = {"X-Admin-Key": ADMIN_KEY}


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """The good build served, the scrambled one built beside it (refused by the gate), the API serving both."""
    root = tmp_path_factory.mktemp("ab")
    shutil.copytree(FIXTURES / "corpus", root / "documents")
    dataset_dir = write_fixture_dataset(root / "dataset")
    settings = embedded_settings(
        root,
        root / "documents",
        eval_dataset_dir=dataset_dir,
        eval_gate_mode="dense",
        eval_gate_margin=0.01,
        rate_limit_per_minute=100_000,
        alias_poll_s=0.5,
        admin_key=ADMIN_KEY,
        collection_alias="rag_chunks",
    )
    settings.resolved_dagster_home.mkdir(parents=True)
    with instance_for_test(temp_dir=str(settings.resolved_dagster_home)) as instance:
        index(settings, instance=instance)
        good = served_collection(settings)
        refused = promote(settings, model=str(damaged_model(root / "scrambled-minilm")), instance=instance)
        assert refused["promoted"] is False and served_collection(settings) == good
        database = ServingDatabase(settings.resolved_serving_db_url)
        keys = {tenant: database.create_key(tenant, "simulated users") for tenant in ("default", "acme")}
        database.close()
        server = ServerThread(create_app(settings)).start()
        try:
            yield {
                "settings": settings,
                "instance": instance,
                "server": server,
                "keys": keys,
                "good": good,
                "worse": refused["evaluated"],
                "dataset": judged_questions(dataset_dir),
            }
        finally:
            server.stop()


def _create(lab, name: str, min_samples: int, **rule) -> dict:
    body = {
        "name": name,
        "arms": [
            {"name": "control", "share": 0.5, "mode": "dense", "top_k": 3},
            {"name": "scrambled", "share": 0.5, "collection": lab["worse"], "mode": "dense", "top_k": 3},
        ],
        "rule": {"min_samples": min_samples, "primary_metric": "relevance_rate", **rule},
        "excluded_tenants": ["acme"],
    }
    response = httpx.post(f"{lab['server'].url}/v1/admin/experiments", json=body, headers=ADMIN)
    assert response.status_code == 201, response.text
    return response.json()


def _stop_running(lab) -> None:
    """One experiment runs at a time: end whatever an earlier test left running."""
    listed = httpx.get(f"{lab['server'].url}/v1/admin/experiments", headers=ADMIN).json()["experiments"]
    for experiment in listed:
        if experiment["status"] == "running":
            httpx.post(f"{lab['server'].url}/v1/admin/experiments/{experiment['name']}/stop", headers=ADMIN)


Judge = Callable[[str, bool], bool]  # (arm, whether the first chunk is on a relevant document) → relevant?


def simulate(lab, users: range, judge: Judge, experiment: str) -> dict[str, int]:
    """Each user asks one question through /v1/retrieve (twice: the arm must stick) and gives feedback."""
    client, seen = lab["server"].client(lab["keys"]["default"]), {"control": 0, "scrambled": 0}
    with client:
        for user in users:
            question, relevant_docs = lab["dataset"][user % len(lab["dataset"])]
            body = {"query": question, "user_id": f"user-{user}", "mode": "hybrid", "top_k": 10}
            first = client.post("/v1/retrieve", json=body).json()
            again = client.post("/v1/retrieve", json=body).json()
            assert first["experiment"] == experiment and first["arm"] == again["arm"]
            assert first["mode"] == "dense" and len(first["chunks"]) == 3  # the arm's settings win
            relevant = judge(first["arm"], first["chunks"][0]["doc_id"] in relevant_docs)
            clicked = next((c["chunk_id"] for c in first["chunks"] if c["doc_id"] in relevant_docs), None)
            feedback = {"query_id": first["query_id"], "is_relevant": relevant, "rating": 5 if relevant else 2}
            response = client.post("/v1/feedback", json=feedback | ({"chunk_id": clicked} if clicked else {}))
            assert response.status_code == 201, response.text
            seen[first["arm"]] += 1
    return seen


def natural(arm: str, on_relevant_document: bool) -> bool:
    return on_relevant_document


def test_admin_routes_need_the_admin_key(lab) -> None:
    """Refused by the shared `admin` dependency (rag_serving.deps): 401 without the admin key, 403 to a tenant key."""
    url = f"{lab['server'].url}/v1/admin/experiments"
    for refused in (httpx.get(url), httpx.post(url, json={}, headers={"X-Admin-Key": "wrong"})):
        assert refused.status_code == 401 and "X-Admin-Key" in refused.json()["detail"]
    tenant = httpx.get(url, headers={"X-API-Key": lab["keys"]["default"]})  # a tenant key is not an admin key
    assert tenant.status_code == 403 and "X-Admin-Key" in tenant.json()["detail"]
    assert httpx.get(url, headers=ADMIN).status_code == 200
    arms = [{"name": "a", "share": 0.5}, {"name": "b", "share": 0.5, "collection": "rag_chunks__nope"}]
    missing = {"name": "nowhere", "arms": arms}
    refused = httpx.post(url, json=missing, headers=ADMIN)
    assert refused.status_code == 422 and "rag builds" in refused.json()["detail"]


def test_the_better_build_wins_and_the_worse_is_never_promoted(lab) -> None:
    settings, instance = lab["settings"], lab["instance"]
    _stop_running(lab)
    created = _create(lab, "scrambled-vs-served", min_samples=40, guardrails=["degraded_rate"])
    assert created["status"] == "running"

    # An excluded tenant is served as usual, outside the experiment.
    with lab["server"].client(lab["keys"]["acme"]) as acme:
        outside = acme.post("/v1/retrieve", json={"query": "What does the cache key on?", "user_id": "u"}).json()
    assert outside["experiment"] is None and outside["arm"] is None and outside["mode"] == "hybrid"

    # Too few samples: the rule holds any verdict back however the numbers look.
    simulate(lab, range(0, 30), natural, "scrambled-vs-served")
    early = report(settings, "scrambled-vs-served", replay=False, instance=instance)
    assert early["verdict"] == "continue" and early["winner"] == "none yet"
    assert "of the 40 relevance_rate observations" in early["reasons"]

    seen = simulate(lab, range(30, 200), natural, "scrambled-vs-served")
    assert min(seen.values()) >= 40, seen
    final = report(settings, "scrambled-vs-served", instance=instance)
    assert final["verdict"] == "keep" and final["winner"] == "control", final["reasons"]
    assert final["winner_primary_low"] <= final["winner_primary"] <= final["winner_primary_high"]
    arms = final["arms"]
    assert arms["control"]["relevance_rate_low"] > arms["scrambled"]["relevance_rate_high"]
    assert arms["control"]["chunk_rank"] >= 1 and arms["control"]["queries"] >= 40
    assert final["offline_ndcg_at_10"]["control"] > final["offline_ndcg_at_10"]["scrambled"]  # the replay agrees
    assert final["promoted"] is False and served_collection(settings) == lab["good"]
    assert {row["collection"]: row["status"] for row in builds(settings)}[lab["worse"]] == "rejected"
    assert "| scrambled |" in final["report"] and "data:image/png;base64," in final["report"]
    assert final["stopped"] is False and final["rejected_builds"] == "none"  # a person's experiment keeps running


    # MLflow: a run per report in `ab-tests`, with the arms as params and each arm's metrics.
    run, first_run = Tracker.from_settings(settings).runs("ab-tests")  # newest first
    assert first_run.data.tags["verdict"] == "continue"
    assert run.data.params["arm.scrambled.collection"] == lab["worse"]
    assert run.data.tags["verdict"] == "keep"
    assert run.data.metrics["control.relevance_rate"] == pytest.approx(arms["control"]["relevance_rate"])
    assert "scrambled.offline_ndcg_at_10" in run.data.metrics

    # The admin report reads the same log; Prometheus counts per arm.
    online = httpx.get(f"{lab['server'].url}/v1/admin/experiments/scrambled-vs-served/report", headers=ADMIN).json()
    assert online["verdict"] == "keep" and online["arms"]["control"]["queries"] == arms["control"]["queries"]
    exported = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(httpx.get(f"{lab['server'].url}/metrics").text)
        for sample in family.samples
    }
    labels = {"experiment": "scrambled-vs-served", "arm": "scrambled", "route": "retrieve"}
    assert exported[("rag_experiment_requests_total", tuple(sorted(labels.items())))] >= 2 * 40  # each user asks twice
    labels = {"experiment": "scrambled-vs-served", "arm": "control", "kind": "relevant"}
    relevant = exported[("rag_experiment_feedback_total", tuple(sorted(labels.items())))]
    assert relevant == round(arms["control"]["relevance_rate"] * arms["control"]["relevance_rate_n"])

    # An answer is served by the same arm as the user's retrievals, with the arm's answerer settings.
    with lab["server"].client(lab["keys"]["default"]) as client:
        body = {"query": lab["dataset"][0][0], "user_id": "user-0"}
        retrieved, answered = client.post("/v1/retrieve", json=body).json(), client.post("/v1/query", json=body).json()
    assert (answered["experiment"], answered["arm"]) == ("scrambled-vs-served", retrieved["arm"])
    assert len(answered["sources"]) == 3 and answered["model"] == "extractive/best-sentences"

    stopped = httpx.post(f"{lab['server'].url}/v1/admin/experiments/scrambled-vs-served/stop", headers=ADMIN)
    assert stopped.json()["status"] == "stopped"
    with lab["server"].client(lab["keys"]["default"]) as client:
        after = client.post("/v1/retrieve", json={"query": "What does the cache key on?", "user_id": "user-1"}).json()
    assert after["experiment"] is None  # traffic is back on the served configuration at once

    # A model update's experiment is stopped once decided (here: again); a candidate its users turned down
    # is rejected.
    with IndexConnection.from_settings(settings).store() as store:
        store.update_record(lab["worse"], status=CANDIDATE)  # as an update leaves it: past the tolerance gate
    decided = report(settings, "scrambled-vs-served", stop_when_decided=True, instance=instance)
    assert decided["verdict"] == "keep" and decided["stopped"] is True and decided["rejected_builds"] == lab["worse"]
    with IndexConnection.from_settings(settings).store() as store:
        record = store.record(lab["worse"])
    assert record.status == "rejected" and "scrambled-vs-served kept the control" in record.rejected_reason


def test_a_build_that_wins_online_still_faces_the_offline_gate(lab) -> None:
    """Users who happen to prefer the scrambled build: the rule ships it, the promotion gate refuses it."""
    settings, instance = lab["settings"], lab["instance"]
    _stop_running(lab)
    _create(lab, "users-like-scrambled", min_samples=40, guardrails=["degraded_rate"])
    votes = itertools.count()

    def likes_scrambled(arm: str, _on_relevant_document: bool) -> bool:
        vote = next(votes) % 10
        return vote != 0 if arm == "scrambled" else vote < 3  # 90% against 30%

    simulate(lab, range(200, 330), likes_scrambled, "users-like-scrambled")
    found = report(settings, "users-like-scrambled", replay=False, instance=instance)
    assert found["verdict"] == "ship" and found["winner"] == "scrambled", found["reasons"]
    assert found["promoted"] is False and "below" in found["promotion_gate"], measured(
        found["promotion_gate_measured"], settings
    )
    assert served_collection(settings) == lab["good"]


def test_an_answerer_and_a_retrieval_configuration_as_arms(lab) -> None:
    _stop_running(lab)
    arms = [
        {"name": "control", "share": 0.5},
        {"name": "quotes-rrf", "share": 0.5, "llm_model": "extractive/quotes", "fusion": "rrf", "top_k": 2},
    ]
    body = {"name": "answerer-ab", "arms": arms, "rule": {"min_samples": 10}}
    assert httpx.post(f"{lab['server'].url}/v1/admin/experiments", json=body, headers=ADMIN).status_code == 201
    answers: dict[str, dict] = {}
    with lab["server"].client(lab["keys"]["default"]) as client:
        for user in range(40):
            found = client.post("/v1/query", json={"query": lab["dataset"][user % 5][0], "user_id": f"u{user}"}).json()
            answers.setdefault(found["arm"], found)
    assert answers["control"]["model"] == "extractive/best-sentences" and len(answers["control"]["sources"]) == 5
    assert answers["quotes-rrf"]["model"] == "extractive/quotes" and len(answers["quotes-rrf"]["sources"]) == 2
