"""The sandbox's clock: the configured time source plus an offset tests can push forward.

This module owns "now" for every rule that expires something (codes, tokens, upload URLs, rate
windows, processing delays). It must not sleep or read wall-clock time for decisions: advancing
the offset is how tests make an hour pass instantly.
"""

from __future__ import annotations

import threading
from collections.abc import Callable


class Clock:
    """``source() + offset``; the offset only grows, through :meth:`advance`."""

    def __init__(self, source: Callable[[], float], lock: threading.RLock) -> None:
        self._source = source
        self._lock = lock
        self._offset_s = 0.0

    def now(self) -> float:
        return self._source() + self._offset_s

    def advance(self, seconds: float) -> dict[str, float]:
        with self._lock:
            self._offset_s += float(seconds)
            return {"offset_s": self._offset_s}

    def reset(self) -> None:
        with self._lock:
            self._offset_s = 0.0
