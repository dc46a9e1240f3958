"""Stopping the servers a test started."""

from __future__ import annotations

import subprocess


def stop_process(process: subprocess.Popen, grace_s: float = 60.0) -> None:
    """SIGTERM, then SIGKILL if the process has not exited after `grace_s`: on a loaded machine a server can
    take longer than a fixed wait to shut down, and the test that started it is not about its shutdown."""
    process.terminate()
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
