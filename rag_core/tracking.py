"""MLflow tracking: experiments, runs and the model registry, on the embedded store or a tracking server.

Embedded default: a SQLite tracking store and a local artifact root under the data dir, so `mlflow ui
--backend-store-uri sqlite:///.rag_data/mlflow.db` shows everything. Production: `MLFLOW_TRACKING_URI`
points at a tracking server, which owns its artifact store. `mlflow` is imported lazily: it is heavy and
the serving hot path never needs it.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from rag_core.settings import Settings

REGISTERED_EMBEDDER = "rag-embedder"
REGISTERED_RERANKER = "rag-reranker"
DESCRIPTIONS = {
    REGISTERED_EMBEDDER: "Fine-tuned embedding models of the RAG index.",
    REGISTERED_RERANKER: "Cross-encoders that rerank retrieved chunks (RAG_RERANK_MODEL=models:/rag-reranker/N).",
}
# MLflow's registry convention: `candidate` names the version waiting for (or facing) its gate, `champion` the
# version the served build embeds with. `models:/rag-embedder@champion` then loads what is served.
CANDIDATE_ALIAS, CHAMPION_ALIAS = "candidate", "champion"
REJECTED_REASON_TAG = "rejected_reason"
# The MLflow 3 UI opens an experiment in the workflow its kind names (the sidebar's switch): runs under
# "Model training", traces under "GenAI".
MODEL_TRAINING = "custom_model_development"
GENAI = "genai_development"
_configure_lock = threading.Lock()
_opened_stores: set[str] = set()  # SQLite stores this process has seen created and migrated
for _noisy in ("mlflow.store.db.utils", "alembic.runtime.migration"):
    logging.getLogger(_noisy).setLevel(logging.WARNING)


def tracking_uri(settings: Settings) -> str:
    return settings.mlflow_tracking_uri or f"sqlite:///{settings.data_dir.resolve() / 'mlflow.db'}"


def registered_version(model_uri: str) -> tuple[str, str] | None:
    """(name, version) of a pinned registry reference `models:/<name>/<version>` — what a build records
    (rag_core.models pins aliases); None for the bundled model, a directory or a run's artifact."""
    match = re.fullmatch(r"models:/([^/@]+)/(\d+)", model_uri)
    return (match.group(1), match.group(2)) if match else None


def artifact_root(settings: Settings) -> Path | None:
    """Where embedded experiments keep artifacts; a tracking server chooses its own."""
    if settings.mlflow_tracking_uri.startswith(("http://", "https://", "databricks")):
        return None
    return settings.data_dir.resolve() / "mlartifacts"


class Tracker:
    """One tracking store. Each call sets the URI on a client of its own, so processes that evaluate
    and train at the same time never cross stores."""

    def __init__(self, uri: str, artifacts: Path | None, ui_url: str = "http://127.0.0.1:5000") -> None:
        self.uri = uri
        self.artifacts = artifacts
        self.ui_url = ui_url.rstrip("/")

    @classmethod
    def from_settings(cls, settings: Settings) -> Tracker:
        return cls(tracking_uri(settings), artifact_root(settings), settings.resolved_mlflow_ui_url)

    def run_url(self, experiment_id: str, run_id: str) -> str:
        """The run's page in the MLflow UI."""
        return f"{self.ui_url}/#/experiments/{experiment_id}/runs/{run_id}"

    def trace_url(self, experiment_id: str, trace_id: str) -> str:
        """The trace opened in its experiment's Traces tab in the MLflow UI."""
        return f"{self.ui_url}/#/experiments/{experiment_id}/traces?selectedEvaluationId={trace_id}"

    def mlflow(self):
        import mlflow

        with _configure_lock:
            mlflow.set_tracking_uri(self.uri)
        self._ensure_sqlite_store()
        return mlflow

    def _ensure_sqlite_store(self) -> None:
        """A new SQLite store is created and migrated by the first client that opens it; two processes opening it
        at once (an evaluation job's parallel steps) both migrate it, and one fails in alembic. The first open in
        each process holds a file lock beside the database, so the second waits and finds the tables made."""
        if not self.uri.startswith("sqlite:///") or self.uri in _opened_stores:
            return
        from mlflow import MlflowClient

        database = Path(self.uri.removeprefix("sqlite:///"))
        database.parent.mkdir(parents=True, exist_ok=True)
        with open(database.with_name(f"{database.name}.lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
            client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
            client.search_experiments(max_results=1)  # the tracking tables
            client.search_registered_models(max_results=1)  # the registry's
        _opened_stores.add(self.uri)

    def client(self):
        from mlflow import MlflowClient

        self.mlflow()
        return MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)

    def experiment_id(self, name: str, kind: str = MODEL_TRAINING) -> str:
        client = self.client()
        experiment = client.get_experiment_by_name(name)
        if experiment is not None:
            return experiment.experiment_id
        location = (self.artifacts / name).as_uri() if self.artifacts else None
        try:
            return client.create_experiment(name, artifact_location=location, tags={"mlflow.experimentKind": kind})
        except Exception:  # created concurrently by another process
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
            return experiment.experiment_id

    @contextlib.contextmanager
    def run(self, experiment: str, run_name: str, tags: Mapping[str, str] | None = None) -> Iterator[Any]:
        mlflow = self.mlflow()
        experiment_id = self.experiment_id(experiment)
        with mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=dict(tags or {})) as run:
            yield run

    def register_model(self, run_id: str, artifact_path: str, name: str = REGISTERED_EMBEDDER) -> str:
        """Registers `runs:/<run>/<artifact_path>` as a new version of `name`; returns its models:/ URI."""
        client = self.client()
        if not client.search_registered_models(filter_string=f"name = '{name}'"):
            with contextlib.suppress(Exception):  # registered concurrently
                client.create_registered_model(name, description=DESCRIPTIONS.get(name, ""))
        source = f"{client.get_run(run_id).info.artifact_uri}/{artifact_path}"
        version = client.create_model_version(name, source=source, run_id=run_id)
        return f"models:/{name}/{version.version}"

    def download(self, model_uri: str, destination: Path) -> Path:
        destination.mkdir(parents=True, exist_ok=True)
        return Path(self.mlflow().artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(destination)))

    def runs(self, experiment: str) -> list[Any]:
        client = self.client()
        found = client.get_experiment_by_name(experiment)
        return client.search_runs([found.experiment_id], order_by=["attributes.start_time DESC"]) if found else []

    # Registry aliases. The registry is bookkeeping beside the served build, which the gate has decided either
    # way: each step says what it did, and a registry that cannot be reached is a warning, not a failed run.

    def mark_candidate(self, model_uri: str) -> str:
        """Alias `candidate` on a newly registered version: it waits for its gate."""

        def change(client, name: str, version: str) -> str:
            client.set_registered_model_alias(name, CANDIDATE_ALIAS, version)
            return f"{name} version {version} is @{CANDIDATE_ALIAS}"

        return self._update_registry(model_uri, change)

    def mark_champion(self, model_uri: str) -> str:
        """Alias `champion` moves to the promoted version, which stops being the candidate (and is no longer
        rejected: an A/B win can promote a version the offline improvement rule turned down)."""

        def change(client, name: str, version: str) -> str:
            found = client.get_model_version(name, version)
            client.set_registered_model_alias(name, CHAMPION_ALIAS, version)
            if CANDIDATE_ALIAS in found.aliases:
                client.delete_registered_model_alias(name, CANDIDATE_ALIAS)
            if REJECTED_REASON_TAG in found.tags:
                client.delete_model_version_tag(name, version, REJECTED_REASON_TAG)
            return f"{name} version {version} is @{CHAMPION_ALIAS}"

        return self._update_registry(model_uri, change)

    def mark_rejected(self, model_uri: str, reason: str) -> str:
        """A version whose build the gate refused loses `candidate` (if it still holds it) and keeps the reason
        as its `rejected_reason` tag; the version itself stays in the registry."""

        def change(client, name: str, version: str) -> str:
            client.set_model_version_tag(name, version, REJECTED_REASON_TAG, reason[:500])
            if CANDIDATE_ALIAS in client.get_model_version(name, version).aliases:
                client.delete_registered_model_alias(name, CANDIDATE_ALIAS)
            return f"{name} version {version} rejected (no longer @{CANDIDATE_ALIAS})"

        return self._update_registry(model_uri, change)

    def _update_registry(self, model_uri: str, change: Callable[[Any, str, str], str]) -> str:
        found = registered_version(model_uri)
        if found is None:
            return f"{model_uri or 'the bundled model'} is not a registered model version: no registry alias to move"
        try:
            return change(self.client(), *found)
        except Exception as error:  # noqa: BLE001 - see above: the served build is decided, the registry trails it
            message = (
                f"the MLflow registry at {self.uri} was not updated for {model_uri} ({error}) — check "
                f"MLFLOW_TRACKING_URI, then set the alias in the MLflow UI (Models → {found[0]} → version {found[1]})"
            )
            logging.getLogger(__name__).warning(message)
            return message
