"""TikTok's per-account rate limits as Prefect limits, Retry-After, and urllib3's debug logs.

* :class:`RateLimits`: TikTok's per-user limits (init 6/min, creator_info 20/min, status 30/min)
  as Prefect global concurrency limits used as rate limits, so every concurrent run on any
  machine sharing the Prefect API respects them.
* :func:`honouring_retry_after`: a retryable TikTok error's Retry-After is waited out before
  Prefect's own retry delay starts.
* :func:`guard_http_debug_logs`: urllib3 logs every request line at DEBUG, the upload URL (and
  its upload_token) included; the one redacting filter goes on those loggers.

Must not: call TikTok, or decide whether a call is made (the tasks do).
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Iterator
from contextlib import contextmanager

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.concurrency.sync import rate_limit
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

from reelflow.logging import install_log_redaction
from reelflow.tiktok.errors import TikTokApiError, TikTokRateLimitedError

# Per user token, per minute (DP, UP: init 6; CI: creator_info 20; ST: status 30).
RATE_LIMITS_PER_MIN = {"init": 6, "creator_info": 20, "status": 30}
RATE_WAIT_TIMEOUT_S = 600.0  # a slot not free after this long fails the attempt (retryable)
MAX_RETRY_AFTER_S = 120.0  # honour Retry-After up to this; beyond it Prefect's backoff decides

_HTTP_DEBUG_LOGGERS = ("urllib3.connectionpool", "urllib3.util.retry", "urllib3.poolmanager")


def guard_http_debug_logs() -> None:
    """Attach the one redacting filter to urllib3's loggers once per process (idempotent)."""
    install_log_redaction(_HTTP_DEBUG_LOGGERS)


def rate_limit_name(kind: str, rate_key: str) -> str:
    return f"tiktok-{kind}-{hashlib.sha256(rate_key.encode()).hexdigest()[:16]}"


def rate_limit_shape(per_window: int, window_s: float) -> tuple[int, float]:
    """(slots, decay per second) such that no ``window_s`` window sees more than ``per_window``.

    A leaky bucket of ``L`` slots decaying at ``d``/s admits at most ``L + window_s * d`` calls
    in any window; TikTok counts a sliding one-minute window. Half the budget as burst and half
    as steady rate (``L = n/2``, ``d = (n - L) / window``) keeps the sum at ``n``: one publish's
    few calls go out at once, and concurrent runs wait for a slot instead of meeting a 429.
    """
    slots = max(1, per_window // 2)
    return slots, (per_window - slots) / window_s


class RateLimits:
    """One run's handle on the shared limits; remembers which ones it has made sure exist."""

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self.ready: set[str] = set()

    def _ensure(self, name: str, per_window: int) -> None:
        if name in self.ready:
            return
        slots, decay = rate_limit_shape(per_window, self.window_s)
        with get_client(sync_client=True) as client:
            try:
                client.read_global_concurrency_limit_by_name(name)
            except ObjectNotFound:
                with contextlib.suppress(ObjectAlreadyExists):  # a concurrent run made it first
                    client.create_global_concurrency_limit(
                        GlobalConcurrencyLimitCreate(
                            name=name, limit=slots, slot_decay_per_second=decay, active=True
                        )
                    )
        self.ready.add(name)

    def take(self, kind: str, *, rate_key: str, account: str) -> None:
        """Block until TikTok's ``kind`` limit for this account has room (shared by all runs)."""
        name = rate_limit_name(kind, rate_key)
        self._ensure(name, RATE_LIMITS_PER_MIN[kind])
        try:
            rate_limit(name, timeout_seconds=RATE_WAIT_TIMEOUT_S, strict=True)
        except TimeoutError:
            raise TikTokRateLimitedError(
                f"no {kind} slot for account {account!r} within {RATE_WAIT_TIMEOUT_S:.0f}s",
                code="local_rate_limit_wait",
                http_status=None,
            ) from None


@contextmanager
def honouring_retry_after() -> Iterator[None]:
    """Wait out a retryable error's Retry-After before Prefect's own retry delay starts."""
    try:
        yield
    except TikTokApiError as exc:
        if exc.retryable and exc.retry_after_s:
            time.sleep(min(exc.retry_after_s, MAX_RETRY_AFTER_S))
        raise
