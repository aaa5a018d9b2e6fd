"""structlog redaction: tokens never reach a log line."""

from __future__ import annotations

from reelflow.logging import REDACTED, redact_secrets, redact_text


def test_secret_keys_are_dropped() -> None:
    """Any key naming a token/secret/authorization loses its value."""
    out = redact_secrets(
        None, "info", {"event": "x", "access_token": "act.123", "Authorization": "B"}
    )
    assert out["access_token"] == REDACTED and out["Authorization"] == REDACTED


def test_token_shaped_substrings_are_scrubbed() -> None:
    """Bearer headers, upload_token query values and token=... pairs inside messages."""
    text = "PUT https://h/video/?upload_id=1&upload_token=SECRET1 Bearer act.SECRET2 refresh_token=SECRET3"
    scrubbed = redact_text(text)
    assert "SECRET" not in scrubbed
    assert "upload_id=1" in scrubbed
