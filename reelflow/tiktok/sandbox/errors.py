"""The sandbox's failure answers and log ids: the two shapes a TikTok endpoint answers errors in.

This module owns :class:`SandboxError` (the ``{data, error:{code, message, log_id}}`` envelope's
error half) and :class:`OAuthError` (the flat OAuth shape), plus TikTok-shaped log ids. It must not
build HTTP responses (``app`` does) nor import the client's error table in ``reelflow.tiktok``:
the emulator states TikTok's answers on its own, so a client bug cannot hide behind a shared table.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime

Headers = dict[str, str] | None


class SandboxError(Exception):
    """An API answer other than success: HTTP status, ``error.code``, message, extra headers."""

    def __init__(self, status: int, code: str, message: str = "", headers: Headers = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.http_status, self.code, self.message = status, code, message
        self.headers = dict(headers or {})


class OAuthError(Exception):
    """An OAuth failure, answered in the flat ``{error, error_description, log_id}`` shape."""

    def __init__(self, http_status: int, error: str, description: str) -> None:
        super().__init__(f"{error}: {description}")
        self.http_status, self.error, self.description = http_status, error, description


def invalid(message: str) -> SandboxError:
    """The ``400 invalid_params`` answer with ``message``."""
    return SandboxError(400, "invalid_params", message)


def new_log_id() -> str:
    """A log id shaped like TikTok's: UTC timestamp then 20 upper-case hex digits."""
    return datetime.now(UTC).strftime("%Y%m%d%H%M%S") + secrets.token_hex(10).upper()
