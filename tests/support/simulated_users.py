"""Simulated users of the A/B and model-update tests: the fixture dataset's questions, each with the documents
SciFact judges relevant to it, so a user can judge an answer by where its first chunk comes from."""

from __future__ import annotations

from pathlib import Path

from rag_core.evaluation import EvalDataset


def judged_questions(folder: Path) -> list[tuple[str, set[str]]]:
    """(question, the documents judged relevant to it) over both splits."""
    found = []
    for split in ("train", "test"):
        dataset = EvalDataset.load(folder, split)
        found += [(dataset.queries[q], set(dataset.qrels[q])) for q in sorted(dataset.queries)]
    return found
