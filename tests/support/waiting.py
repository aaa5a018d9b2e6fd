"""One bounded poll for the tests: wait until a check returns something, or fail.

Every wait in the suite has a deadline; a wait that runs out raises ``AssertionError`` (a test
failure, which a caller may catch to add what it knows), never hangs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

DEFAULT_WAIT_S = 30.0  # a generous bound, never reached when green


def wait_for(
    check: Callable[[], T | None],
    what: str,
    timeout_s: float = DEFAULT_WAIT_S,
    poll_s: float = 0.2,
    *,
    detail: Callable[[], object] | None = None,
) -> T:
    """Poll ``check`` until it returns something truthy; past ``timeout_s`` raise
    ``AssertionError`` naming ``what`` (and ``detail()``, when given)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            extra = f"; {detail()}" if detail is not None else ""
            raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}{extra}")
        time.sleep(poll_s)
