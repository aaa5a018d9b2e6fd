"""What is fixed when the sandbox starts: :class:`SandboxConfig` and the units it is written in.

This module owns the start-time knobs (client credentials, chunk limits, token lifetimes, rate
limits, seed, clock source). It must not hold runtime state: faults, policies and timings that
change while the sandbox runs live in the modules that use them. Its limits are TikTok's as the
sandbox reads them, deliberately not shared with ``reelflow.tiktok.plan`` (the client's rules):
an emulator that shares the client's rules shares its bugs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

MIB = 1024 * 1024
REDIRECT_URI = "https://localhost/callback"


@dataclass
class SandboxConfig:
    """Everything fixed when the sandbox starts; faults and policies change later at runtime."""

    client_key: str = "reelflow-sandbox-client"
    client_secret: str = "reelflow-sandbox-secret"
    redirect_uri: str = REDIRECT_URI
    # [U] "MB" is undocumented; binary MiB by default, configurable (e.g. decimal) per test.
    min_chunk_bytes: int = 5 * MIB
    max_chunk_bytes: int = 64 * MIB
    max_final_chunk_bytes: int = 128 * MIB
    max_video_bytes: int = 4 * 1024 * MIB
    max_chunk_count: int = 1000
    # Older pages: 24 h / 365 d; newer pages: 2 h / 180 d with rotation. Both are configurable.
    access_expires_in: int = 86400
    refresh_expires_in: int = 31536000
    rotate_refresh: bool = True
    # [U] OA: refresh tokens last 365 d "after the initial issuance", so a refresh keeps the
    # original deadline unless this is set.
    refresh_resets_expiry: bool = False
    auth_code_ttl_s: float = 600.0
    upload_url_ttl_s: float = 3600.0
    processing_delay_s: float = 0.5
    rate_limits: dict[str, int] = field(
        default_factory=lambda: {"init": 6, "creator_info": 20, "status": 30}
    )
    rate_limit_window_s: float = 60.0
    # [U] OAuth error statuses are undocumented: None answers RFC 6749 statuses (400; 401 for
    # invalid_client); set e.g. 200 to check that a client keys on the body, not the status.
    oauth_error_status: int | None = None
    seed: int | None = None
    clock: Callable[[], float] = time.monotonic
