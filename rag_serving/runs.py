"""The Dagster run behind a document's status, so the console can say that its run is queued, going or failed
and link to it in the Dagster UI. Read from the Dagster instance under DAGSTER_HOME; the serving process
never launches runs (the sensor does)."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("rag_serving")

# The first asset of the indexing graph: every index run of a partition plans and materializes it.
FIRST_ASSET = "raw_documents"


@dataclass(frozen=True)
class RunInfo:
    run_id: str
    status: str  # Dagster's run status: QUEUED, STARTING, STARTED, SUCCESS, FAILURE, CANCELED, ...
    url: str


class IndexingRuns:
    """The latest index run of each partition. The Dagster instance is opened on first use (importing
    Dagster takes seconds), and not at all while DAGSTER_HOME holds none."""

    def __init__(self, dagster_home: Path, ui_url: str) -> None:
        self.dagster_home = dagster_home
        self.ui_url = ui_url.rstrip("/")
        self._instance: Any = None
        self._lock = threading.Lock()
        self._last_problem = ""

    def run_url(self, run_id: str) -> str:
        return f"{self.ui_url}/runs/{run_id}"

    def latest(self, partition_keys: list[str]) -> dict[str, RunInfo]:
        """The latest run that planned or materialized each partition (a sensor run is planned while it
        is queued; a one-run backfill records materializations per partition). None known while the
        Dagster instance cannot be read: the documents are listed without their runs, and it says why."""
        try:
            return self._latest(partition_keys)
        except Exception as error:
            problem = f"{type(error).__name__}: {error}"
            if problem != self._last_problem:  # once per cause, not once per request
                log.warning(
                    "the Dagster instance under %s could not be read (%s): documents are listed without their "
                    "runs — point the API's DAGSTER_HOME at the daemon's, with its storage reachable",
                    self.dagster_home,
                    problem,
                )
            self._last_problem = problem
            return {}

    def _latest(self, partition_keys: list[str]) -> dict[str, RunInfo]:
        instance = self._open()
        if instance is None:
            return {}
        from dagster import AssetKey, AssetRecordsFilter

        asset = AssetKey(FIRST_ASSET)
        found: dict[str, RunInfo] = {}
        for key in partition_keys:
            candidates = []
            if planned := instance.get_latest_planned_materialization_info(asset, key):
                candidates.append((planned.storage_id, planned.run_id))
            done = instance.fetch_materializations(AssetRecordsFilter(asset, asset_partitions=[key]), limit=1)
            candidates += [(record.storage_id, record.run_id) for record in done.records]
            if not candidates:
                continue
            run_id = max(candidates)[1]
            record = instance.get_run_record_by_id(run_id)
            status = record.dagster_run.status.value if record is not None else "UNKNOWN"
            found[key] = RunInfo(run_id, status, self.run_url(run_id))
        return found

    def _open(self) -> Any:
        with self._lock:
            if self._instance is None and self.dagster_home.is_dir():
                from dagster import DagsterInstance

                self._instance = DagsterInstance.from_config(str(self.dagster_home))
            return self._instance

    def close(self) -> None:
        with self._lock:
            if self._instance is not None:
                self._instance.dispose()
                self._instance = None
