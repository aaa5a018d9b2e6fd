"""Per-token sliding-window rate limits, as TikTok answers them (429 with Retry-After).

This module owns the windows: calls per ``(token, route)`` within ``rate_limit_window_s``, limited
per bucket by ``SandboxConfig.rate_limits``. It must not authenticate (``oauth`` hands it a live
token) and must not inject faults: injected 429s are the fault dice's, these are the real limits.
"""

from __future__ import annotations

import threading
from collections import deque

from reelflow.tiktok.sandbox.clock import Clock
from reelflow.tiktok.sandbox.config import SandboxConfig
from reelflow.tiktok.sandbox.errors import SandboxError


class RateWindows:
    """Sliding windows of accepted call times, one per token and route."""

    def __init__(self, config: SandboxConfig, clock: Clock, lock: threading.RLock) -> None:
        self._config = config
        self._clock = clock
        self._lock = lock
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self._windows: dict[tuple[str, str], deque[float]] = {}

    def take(self, token: str, route: str, bucket: str) -> None:
        """Count a call of ``token`` on ``route``, or refuse it when ``bucket``'s limit is hit."""
        limit = self._config.rate_limits.get(bucket)
        if limit is None:
            return
        with self._lock:
            now, window = self._clock.now(), self._config.rate_limit_window_s
            hits = self._windows.setdefault((token, route), deque())
            while hits and hits[0] <= now - window:
                hits.popleft()
            if len(hits) >= limit:  # rejected calls are not counted, so waiting always recovers
                retry_after = {"Retry-After": str(max(1, int(hits[0] + window - now + 0.999)))}
                message = "API rate limit was exceeded, please try again later."
                raise SandboxError(429, "rate_limit_exceeded", message, retry_after)
            hits.append(now)
