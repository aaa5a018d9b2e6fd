"""Shared TikTok test helpers: a sandbox creator stored as a reelflow account."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from reelflow.tiktok.sandbox import RunningSandbox, SandboxConfig
from storage.accounts import save_account
from storage.crypto import secret_box
from storage.runtime import Runtime

SANDBOX_CONFIG = SandboxConfig(processing_delay_s=0.0, seed=1234)


def add_account(
    rt: Runtime, sb: RunningSandbox, name: str = "creator", **kw: Any
) -> dict[str, Any]:
    """A sandbox creator, stored in the catalog under ``name``; returns the sandbox's tokens."""
    expires_in = kw.pop("stored_expires_in", None)
    created = sb.state.create_account(name, **kw)
    save_account(
        rt.catalog.engine,
        secret_box(rt.settings),
        name,
        access_token=created["access_token"],
        refresh_token=created["refresh_token"],
        expires_in=created["expires_in"] if expires_in is None else expires_in,
        refresh_expires_in=created["refresh_expires_in"],
        open_id=created["open_id"],
        scopes=created["scope"],
    )
    return created


class PutMeter:
    """Counts the chunk bytes the sandbox accepted to receive (each PUT that passed its header
    checks, in full: a PUT cut off by a kill counts too, an upper bound on what arrived).

    ``with PutMeter(sb) as meter: ...; meter.bytes``. Patches the sandbox state's
    ``begin_put`` for the duration only; the sandbox's own behaviour is unchanged.
    """

    def __init__(self, sb: RunningSandbox) -> None:
        self.sb = sb
        self.bytes = 0
        self.puts = 0
        self._lock = threading.Lock()
        self._original: Any = None

    def __enter__(self) -> PutMeter:
        self._original = original = self.sb.state.begin_put

        def metered(upload_id: str, upload_token: str, headers: Any) -> Any:
            plan = original(upload_id, upload_token, headers)
            with self._lock:
                self.bytes += plan.length
                self.puts += 1
            return plan

        self.sb.state.begin_put = metered  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.sb.state.begin_put = self._original  # type: ignore[method-assign]


SLOWED_METHODS = ("creator_info", "init_video", "begin_put", "fetch_status", "cancel")


@contextmanager
def slow_sandbox(sb: RunningSandbox, delay_s: float) -> Iterator[None]:
    """Every API call and chunk PUT waits ``delay_s`` before the sandbox handles it (a slow
    link), so a kill test can land inside short steps. Restores the state's methods after."""
    saved = {name: getattr(sb.state, name) for name in SLOWED_METHODS}

    def slowed(method: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            time.sleep(delay_s)
            return method(*args, **kwargs)

        return call

    for name, method in saved.items():
        setattr(sb.state, name, slowed(method))
    try:
        yield
    finally:
        for name, method in saved.items():
            setattr(sb.state, name, method)
