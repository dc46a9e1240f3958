"""The MLflow registry aliases of the embedding model, on a real MLflow store in a temp dir (the embedded
SQLite file the project uses; MLflow 3 retired the plain-folder store):
`candidate` marks a freshly registered version, `champion` follows promotions, a rejected version loses
`candidate` and keeps the reason as a tag. The assets that call these steps run end to end in
tests/integration/test_promotion.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.exceptions import MlflowException

from rag_core.models import ModelResolver
from rag_core.tracking import (
    CANDIDATE_ALIAS,
    CHAMPION_ALIAS,
    REGISTERED_EMBEDDER,
    REJECTED_REASON_TAG,
    Tracker,
    registered_version,
)


def _register(tracker: Tracker, folder: Path, name: str) -> str:
    """A run with a (tiny) model artifact, registered as the next version of rag-embedder."""
    (folder / name).mkdir(parents=True)
    (folder / name / "config.json").write_text("{}")
    with tracker.run("embeddings", name) as run:
        tracker.mlflow().log_artifacts(str(folder / name), artifact_path="model")
    return tracker.register_model(run.info.run_id, "model")


def _aliases(tracker: Tracker, model_uri: str) -> list[str]:
    name, version = registered_version(model_uri)
    return sorted(tracker.client().get_model_version(name, version).aliases)


def _holder(tracker: Tracker, alias: str) -> str | None:
    try:
        return str(tracker.client().get_model_version_by_alias(REGISTERED_EMBEDDER, alias).version)
    except MlflowException:  # the alias is on no version
        return None


def test_candidate_and_champion_aliases_follow_the_gate(tmp_path: Path) -> None:
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "artifacts")
    first = _register(tracker, tmp_path / "models", "first")
    assert first == f"models:/{REGISTERED_EMBEDDER}/1"
    assert "@candidate" in tracker.mark_candidate(first) and _aliases(tracker, first) == [CANDIDATE_ALIAS]

    # Promoted: champion, no longer the candidate; `@champion` now loads it.
    assert "@champion" in tracker.mark_champion(first)
    assert _aliases(tracker, first) == [CHAMPION_ALIAS] and _holder(tracker, CANDIDATE_ALIAS) is None
    resolver = ModelResolver(tmp_path / "cache", tracker)
    assert resolver.pin(f"models:/{REGISTERED_EMBEDDER}@champion") == first

    # A second version is promoted: champion moves to it.
    second = _register(tracker, tmp_path / "models", "second")
    tracker.mark_candidate(second)
    tracker.mark_champion(second)
    assert _aliases(tracker, first) == [] and _aliases(tracker, second) == [CHAMPION_ALIAS]
    assert resolver.pin(f"models:/{REGISTERED_EMBEDDER}@champion") == second

    # A third is rejected: it loses `candidate`, keeps the reason, stays registered; the champion is untouched.
    third = _register(tracker, tmp_path / "models", "third")
    tracker.mark_candidate(third)
    assert _holder(tracker, CANDIDATE_ALIAS) == "3"
    tracker.mark_rejected(third, "nDCG@10 +0.0005 (95% CI -0.010 to +0.011): the interval is not above zero")
    version = tracker.client().get_model_version(REGISTERED_EMBEDDER, "3")
    assert version.aliases == [] and version.tags[REJECTED_REASON_TAG].startswith("nDCG@10 +0.0005")
    assert _holder(tracker, CANDIDATE_ALIAS) is None and _holder(tracker, CHAMPION_ALIAS) == "2"

    # Rejecting an older version does not take `candidate` from the newer one that holds it.
    fourth = _register(tracker, tmp_path / "models", "fourth")
    tracker.mark_candidate(fourth)
    tracker.mark_rejected(first, "refused again")
    assert _holder(tracker, CANDIDATE_ALIAS) == "4"

    # An A/B win can promote a version the improvement rule refused: it stops being rejected.
    tracker.mark_champion(third)
    version = tracker.client().get_model_version(REGISTERED_EMBEDDER, "3")
    assert version.aliases == [CHAMPION_ALIAS] and REJECTED_REASON_TAG not in version.tags


@pytest.mark.parametrize("reference", ["bundled:all-MiniLM-L6-v2", "/models/local-dir", "runs:/abc/model", ""])
def test_a_build_without_a_registered_version_moves_no_alias(tmp_path: Path, reference: str) -> None:
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "artifacts")
    assert "not a registered model version" in tracker.mark_champion(reference)
    assert not (tmp_path / "mlflow.db").exists()  # the registry was never opened


def test_an_unreachable_registry_is_a_warning_that_names_the_fix(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")  # a store that cannot be opened (a server would retry for minutes)
    tracker = Tracker(f"sqlite:///{tmp_path / 'a-file' / 'mlflow.db'}", None)
    outcome = tracker.mark_champion(f"models:/{REGISTERED_EMBEDDER}/1")
    assert "was not updated" in outcome and "MLFLOW_TRACKING_URI" in outcome
