"""What the command line shows while a job runs in its process: one line as each step starts and ends (its
name, k of n, seconds) and the run's warnings and failures. Every event, DEBUG included, goes to the run's
log file under `$RAG_DATA_DIR/logs/` and to the Dagster instance (the run's page in the UI), not to the
terminal."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import TextIO

from dagster import DagsterEventType, DagsterInstance, EventLogEntry, ExecuteInProcessResult, JobDefinition
from dagster._core.utils import make_new_run_id
from dagster._utils.error import SerializableErrorInfo

# Dagster's console logger of an in-process run stays silent (its errors carry whole stack traces):
# StepProgress shows the steps, their failures' causes and the run's warnings, one line each.
QUIET_CONSOLE = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}


class StepProgress:
    """An event listener of one run: progress lines on `out`, every event in `log_path`."""

    def __init__(self, steps: list[str], log_path: Path, out: TextIO = sys.stderr) -> None:
        self.steps = steps
        self.out = out
        self.started: dict[str, float] = {}
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log = log_path.open("a", encoding="utf-8")

    def __call__(self, entry: EventLogEntry) -> None:
        stamp = time.strftime("%H:%M:%S", time.localtime(entry.timestamp))
        level = logging.getLevelName(entry.level) if isinstance(entry.level, int) else str(entry.level)
        self.log.write(f"{stamp} {level:<7} {entry.step_key or '-'}  {entry.message}\n")
        self.log.flush()
        kind, step = entry.dagster_event_type, entry.step_key or ""
        if kind == DagsterEventType.STEP_START:
            self.started[step] = entry.timestamp
            self._say(f"{self._position(step)} {step} …")
        elif kind == DagsterEventType.STEP_SUCCESS:
            self._say(f"{self._position(step)} {step} done ({self._seconds(step, entry)})")
        elif kind == DagsterEventType.STEP_FAILURE:
            reason = _root_cause(entry.dagster_event.step_failure_data.error)
            self._say(f"{self._position(step)} {step} FAILED ({self._seconds(step, entry)}): {reason}")
        elif kind == DagsterEventType.STEP_SKIPPED:
            self._say(f"{self._position(step)} {step} skipped (an upstream step or a blocking check did not pass)")
        elif kind is None and isinstance(entry.level, int) and entry.level >= logging.WARNING:
            self._say(f"{logging.getLevelName(entry.level).lower()} in {step or 'the run'}: {entry.user_message}")

    def _position(self, step: str) -> str:
        return f"[{self.steps.index(step) + 1}/{len(self.steps)}]" if step in self.steps else "[+]"

    def _seconds(self, step: str, entry: EventLogEntry) -> str:
        return f"{entry.timestamp - self.started.get(step, entry.timestamp):.1f} s"

    def _say(self, line: str) -> None:
        print(f"  {line}", file=self.out, flush=True)

    def close(self) -> None:
        self.log.close()


def _root_cause(error: SerializableErrorInfo | None) -> str:
    """The first line of the first error under Dagster's wrappers: ours name the fix (the library errors they
    wrap, further down, do not)."""
    if error is None:
        return "see the run's log"
    while error.cause is not None and (error.cls_name or "").startswith("Dagster"):
        error = error.cause
    return error.message.strip().splitlines()[0]


def run_with_progress(
    job: JobDefinition,
    instance: DagsterInstance,
    logs_dir: Path,
    run_config: dict | None = None,
    tags: dict[str, str] | None = None,
    raise_on_error: bool = False,
    out: TextIO = sys.stderr,
) -> ExecuteInProcessResult:
    """Runs `job` in this process, recorded in `instance` (and the UI), showing its steps as they go."""
    run_id = make_new_run_id()
    log_path = logs_dir / f"{job.name}-{run_id[:8]}.log"
    print(f"{job.name}: run {run_id} (every event: {log_path}, and the run in the Dagster UI)", file=out, flush=True)
    progress = StepProgress([node.name for node in job.nodes_in_topological_order], log_path, out)
    instance.add_event_listener(run_id, progress)
    try:
        return job.execute_in_process(
            run_config={**(run_config or {}), **QUIET_CONSOLE},
            instance=instance,
            run_id=run_id,
            tags=tags,
            raise_on_error=raise_on_error,
        )
    finally:
        progress.close()
