"""Issue 12, "How to prove it": the README's commands, run as a new user runs them on a fresh clone, offline
(scripts/walkthrough.py). It fails on the first command that breaks and names it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.walkthrough  # its own CI-sized run: `make walkthrough` (every step it takes has its own test in the suite)
def test_the_readme_walkthrough_passes_on_a_fresh_copy(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "walkthrough.py"), "--keep", str(tmp_path / "clone")],
        capture_output=True,
        text=True,
        # each block also has its own limit (30 min); the walk: 6 min on 2 quiet cores, ~30 on busy ones
        timeout=3 * 3600,
    )
    assert result.returncode == 0, f"{result.stderr[-4000:]}\n--- stdout ---\n{result.stdout[-4000:]}"
    summary = result.stdout.split("walkthrough passed: ")[1]
    assert "$ make demo" in result.stdout and "$ .venv/bin/rag eval" in result.stdout
    # what was skipped is listed, each with its reason
    assert "line " in summary and "the production profile" in summary and "benchmarks" in summary
    # the walk happened in the copy: the bundled corpus and this checkout's data dir are untouched
    assert (tmp_path / "clone" / ".rag_data" / "milvus.db").exists()
    assert not (tmp_path / "clone" / "data" / "sample" / "my-notes.md").exists()
