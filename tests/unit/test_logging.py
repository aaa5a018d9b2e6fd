"""The one redactor: tokens, passwords and signed-URL credentials never reach a log line."""

from __future__ import annotations

import io
import logging

import structlog
from hypothesis import given, settings
from hypothesis import strategies as st

from reelflow import logging as rlog
from reelflow.logging import (
    REDACTED,
    RedactingFilter,
    install_log_redaction,
    redact_secrets,
    redact_text,
    remember_secret,
    remember_settings_secrets,
)

# Secrets as they are made: URL-safe tokens, base64, hex; at least MIN_SECRET_CHARS long.
# The "Z9" prefix keeps a secret out of the prose around it (prose has no capitals or digits).
SECRET = st.text(
    alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_~.+",  # no "/": URLs encode it
    min_size=6,
    max_size=40,
).map(lambda s: "Z9" + s)
PROSE = st.text(alphabet="abcdefghijklmnopqrstuvwxyz ", max_size=30)

SHAPES = (
    "GET https://h.example/clip.mp4?X-Amz-Signature={s}&x=1",
    "https://b.s3.amazonaws.com/k?X-Amz-Credential={s}&X-Amz-Date=20260101T000000Z",
    "https://b/k?X-Amz-Security-Token={s}",
    "POST /oauth/token/ grant_type=authorization_code&code={s}&redirect_uri=x",
    "client_key=ck&client_secret={s}&grant_type=refresh_token",
    '{{"access_token": "{s}", "expires_in": 86400}}',
    "{{'refresh_token': '{s}'}}",
    "access_token={s}",
    "Authorization: Bearer {s}",
    "https://user:{s}@host.example/clip.mp4",
    "https://{s}@host.example/clip.mp4",
    "postgresql+psycopg://postgres:{s}@127.0.0.1:5432/db",
    "PUT https://open-upload.tiktokapis.com/video/?upload_id=1&upload_token={s}",
    "tokens act.{s} and rft.{s}",
)


def test_secret_keys_are_dropped() -> None:
    """Any key naming a token/secret/authorization loses its value."""
    out = redact_secrets(
        None, "info", {"event": "x", "access_token": "act.123", "Authorization": "B"}
    )
    assert out["access_token"] == REDACTED and out["Authorization"] == REDACTED


def test_token_shaped_substrings_are_scrubbed() -> None:
    """Bearer headers, upload_token query values and token=... pairs inside messages."""
    text = (
        "PUT https://h/video/?upload_id=1&upload_token=SECRET1 Bearer act.SECRET2 "
        "refresh_token=SECRET3"
    )
    scrubbed = redact_text(text)
    assert "SECRET" not in scrubbed
    assert "upload_id=1" in scrubbed


def test_harmless_text_is_kept() -> None:
    """Redaction masks values, not ordinary words, error codes or non-secret query values."""
    for text in (
        "The chunk size is invalid",
        '{"error": {"code": "spam_risk_too_many_posts"}}',
        "tiktok_code=spam_risk upload_id=7 part_number=3",
        "s3://bucket/videos/abc.mp4",
        "https://host.example/clip.mp4?token=REDACTED".replace("token=REDACTED", "id=4"),
    ):
        assert redact_text(text) == text


@given(secret=SECRET, before=PROSE, after=PROSE, shape=st.sampled_from(SHAPES))
@settings(max_examples=300, deadline=None)
def test_planted_secret_never_survives(secret: str, before: str, after: str, shape: str) -> None:
    """Whatever the secret and the prose around it, a secret in a known shape is masked."""
    text = f"{before} {shape.format(s=secret)} {after}"
    assert secret not in redact_text(text)


@given(secret=SECRET, before=PROSE, after=PROSE)
@settings(max_examples=200, deadline=None)
def test_remembered_secret_is_masked_anywhere(secret: str, before: str, after: str) -> None:
    """A value the process knows to be secret is masked verbatim and percent-encoded, in any
    context, even one with no secret-looking name around it."""
    remember_secret(secret)
    from urllib.parse import quote

    for planted in (secret, quote(secret, safe="")):
        assert planted not in redact_text(f"{before}{planted}{after}")


def test_settings_secrets_are_remembered(monkeypatch: object) -> None:
    """Client secret, webhook secret, encryption key and the DB URL password from Settings."""
    from reelflow.settings import Settings

    values = {
        "tiktok_client_secret": "canary-client-secret-1",
        "webhook_secret": "canary-webhook-secret-2-xxxxxxxxxxxxxxxxxxxxxx",
        "secret_key": "canary-secret-key-3-xxxxxxxxxxxx",
        "database_url": "postgresql+psycopg://postgres:canary-db-pw-4@127.0.0.1:5432/x",
    }
    settings_obj = Settings(**values)  # type: ignore[arg-type]
    remember_settings_secrets(settings_obj)
    text = "boom: canary-client-secret-1 / canary-webhook-secret-2-xxxxxxxxxxxxxxxxxxxxxx / "
    text += "canary-secret-key-3-xxxxxxxxxxxx / pw canary-db-pw-4"
    assert "canary" not in redact_text(text)


def test_structlog_events_are_redacted_with_capture_logs() -> None:
    """Through structlog's processor chain: message values, nested values and tracebacks."""
    with structlog.testing.capture_logs(processors=[redact_secrets]) as logs:
        log = structlog.get_logger("t")
        log.info(
            "source_failed",
            url="https://u:pw-canary-1@h/x.mp4?X-Amz-Signature=sig-canary-2",
            nested={"headers": {"Authorization": "Bearer bearer-canary-3"}, "n": 1},
            items=["client_secret=cs-canary-4"],
        )
        try:
            raise RuntimeError("GET https://h/x?X-Amz-Security-Token=tok-canary-5 failed")
        except RuntimeError:
            log.exception("read_failed")
    text = repr(logs)
    assert "canary" not in text
    assert logs[0]["nested"]["n"] == 1 and "RuntimeError" in logs[1]["exception"]


def test_filter_redacts_prefect_records_and_tracebacks() -> None:
    """A stdlib record (as Prefect's loggers make them) loses secrets in args and traceback."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactingFilter())
    logger = logging.getLogger("prefect.test_redaction")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.error("opening %s", "https://h/x?token=tok-canary-6")
        try:
            raise ValueError("https://user:pw-canary-7@h/x")
        except ValueError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
    out = stream.getvalue()
    assert "canary" not in out and "ValueError" in out and "token=***" in out


def test_install_puts_the_filter_on_prefect_handlers() -> None:
    """Every handler of ``prefect`` and its children (the API log handler too) gets the filter."""
    install_log_redaction()
    install_log_redaction()  # idempotent
    for name in ("prefect", "prefect.flow_runs", "prefect.task_runs"):
        logger = logging.getLogger(name)
        assert sum(isinstance(f, RedactingFilter) for f in logger.filters) == 1
        for handler in logger.handlers:
            assert sum(isinstance(f, RedactingFilter) for f in handler.filters) == 1, handler


def test_only_one_redactor() -> None:
    """TikTok's error module uses the same redactor (no second rule set to drift)."""
    from reelflow.tiktok.errors import redact

    sample = "client_secret=a1b2c3d4 X-Amz-Security-Token=z9y8x7w6"
    assert (
        redact(sample) == rlog.redact_text(sample) == ("client_secret=*** X-Amz-Security-Token=***")
    )


def test_prefect_record_fields_keep_every_field_and_never_clobber_the_record() -> None:
    """Fields become ``extra`` keys; names the LogRecord or the run logger own are only under
    ``event_fields``, so ``makeRecord`` never raises and the run's routing ids stay Prefect's."""
    event = {
        "event": "chunk_uploaded",
        "level": "info",
        "part_number": 3,
        "name": "clip.mp4",
        "message": "m",
        "flow_run_id": "x",
    }
    extra = rlog.prefect_record_fields(event, taken={"flow_run_id"})
    assert extra["event"] == "chunk_uploaded" and extra["part_number"] == 3
    assert not {"name", "message", "flow_run_id", "level"} & set(extra)
    assert extra["event_fields"] == {k: v for k, v in event.items() if k not in ("event", "level")}
    record = logging.getLogger("t").makeRecord(
        "t", logging.INFO, "f", 1, "m", (), None, extra=extra
    )
    assert record.part_number == 3  # type: ignore[attr-defined]


# Every name the key rule (structlog fields) or the text rule (name=value in a message) knew
# before the two were made to cover the same names.
KEY_RULE_NAMES = ("token", "secret", "password", "passwd", "authorization", "api_key", "apikey")
KEY_RULE_NAMES += ("credential", "signature", "cookie")
TEXT_RULE_NAMES = ("upload_token", "access_token", "refresh_token", "id_token", "client_secret")
TEXT_RULE_NAMES += ("code_verifier", "x-amz-security-token", "x-amz-signature", "x-amz-credential")
TEXT_RULE_NAMES += ("aws_secret_access_key", "aws_session_token", "secret_key", "webhook_secret")
TEXT_RULE_NAMES += ("sig",)


def test_one_redactor_covers_every_name_both_rules_covered() -> None:
    """Each name either rule masked is masked both as a structlog key and as name=value or
    "name": "value" text, so a secret is not safe in one channel and shown in the other."""
    for name in KEY_RULE_NAMES + TEXT_RULE_NAMES:
        secret = f"Z9canary-{len(name)}-value"
        event = redact_secrets(None, "info", {"event": "e", name: secret})
        assert event[name] == REDACTED, name
        for text in (f"{name}={secret}", f'{{"{name}": "{secret}"}}', f"{name}: {secret}"):
            assert secret not in redact_text(text), text


def test_header_shapes_of_the_key_rule_are_masked_in_text() -> None:
    """Authorization keeps its scheme, a Cookie header loses every pair, prose stays."""
    assert redact_text("Authorization: Bearer Z9abcdef") == "Authorization: Bearer ***"
    assert redact_text("Proxy-Authorization: Basic Z9abcdef") == "Proxy-Authorization: Basic ***"
    assert "Z9" not in redact_text("Cookie: sid=Z9abcdef; csrf=Z9ghijkl")
    assert "Z9" not in redact_text("set-cookie: sid=Z9abcdef; Path=/; HttpOnly")
    assert redact_text("the URL carries credentials; seal them") == (
        "the URL carries credentials; seal them"
    )
