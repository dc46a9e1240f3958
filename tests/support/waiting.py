"""Waiting on a readiness signal with a deadline, never a fixed sleep."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(what: str, check: Callable[[], T], timeout_s: float = 30.0, every_s: float = 0.1) -> T:
    """The first truthy result of `check`; fails naming `what` and the last result after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    last: object = None
    while True:
        try:
            last = check()
            if last:
                return last
        except (AssertionError, KeyError, ValueError, IndexError) as error:
            last = error
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s:.0f} s (last: {last!r})")
        time.sleep(every_s)
