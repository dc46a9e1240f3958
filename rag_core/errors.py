"""Errors a user can meet and fix, as opposed to bugs."""

from __future__ import annotations


class Refusal(RuntimeError):
    """An expected refusal (nothing to roll back, Milvus not reachable, …): the message names the fix, and a
    command line prints it on one line and exits 1, with no traceback."""
