"""Shared TikTok test helpers: a sandbox creator stored as a reelflow account."""

from __future__ import annotations

from typing import Any

from reelflow.tiktok.sandbox import SandboxConfig
from reelflow.tiktok.sandbox_app import RunningSandbox
from storage.publishing import save_account, secret_box
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
