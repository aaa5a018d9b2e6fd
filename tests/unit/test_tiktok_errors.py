"""error_from_response turns every TikTok reply shape into the right typed error (or None)."""

from __future__ import annotations

import json
import pickle
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import pytest
import requests
from requests.structures import CaseInsensitiveDict

from reelflow.errors import PublishError, ReelflowError, is_retryable
from reelflow.tiktok.errors import (
    UPLOAD_ENDPOINT,
    AccessTokenInvalidError,
    TikTokApiError,
    TikTokAuthError,
    TikTokInvalidRequestError,
    TikTokPolicyError,
    TikTokPublishFailedError,
    TikTokRateLimitedError,
    TikTokServerError,
    TikTokUploadError,
    UploadOutOfSyncError,
    UploadSessionNotFoundError,
    UploadUrlExpiredError,
    error_from_response,
    malformed_response,
    redact,
)
from reelflow.tiktok.plan import ContentRange

UPLOAD_URL = "https://open-upload.tiktokapis.com/video/?upload_id=67890&upload_token=Xza123secret"
INIT = "/v2/post/publish/video/init/"
CREATOR_INFO = "/v2/post/publish/creator_info/query/"
TOKEN = "/v2/oauth/token/"


def response(
    status: int,
    body: Any = None,
    *,
    headers: dict[str, str] | None = None,
    method: str | None = None,
    url: str = "https://open.tiktokapis.com/v2/post/publish/video/init/",
) -> requests.Response:
    """A requests.Response built by hand: status, body (dict -> JSON, bytes as-is), headers."""
    resp = requests.Response()
    resp.status_code = status
    if body is None:
        resp._content = b""
    elif isinstance(body, bytes):
        resp._content = body
    else:
        resp._content = json.dumps(body).encode()
    resp.headers = CaseInsensitiveDict(headers or {})
    resp.url = url
    if method is not None:
        resp.request = requests.Request(method, url).prepare()
    return resp


def envelope(code: str, message: str = "", log_id: str = "LOG123", **data: Any) -> dict[str, Any]:
    return {"data": data, "error": {"code": code, "message": message, "log_id": log_id}}


def test_ok_envelope_is_success() -> None:
    """HTTP 200 with error.code 'ok' is not an error."""
    resp = response(200, envelope("ok", publish_id="v_pub_file~v2-1.1", upload_url=UPLOAD_URL))
    assert error_from_response(resp, endpoint=INIT) is None


def test_failed_status_is_still_http_success() -> None:
    """status FAILED arrives as 200/ok; error_from_response leaves it to the status reader."""
    body = {"data": {"fail_reason": "file_format_check_failed", "status": "FAILED"}}
    body["error"] = {"code": "ok", "message": "", "log_id": "L"}
    assert error_from_response(response(200, body), endpoint="status") is None


def test_oauth_success_body_is_success() -> None:
    """The flat OAuth token body (no error field) is success."""
    body = {"access_token": "act.abcdefgh1234", "refresh_token": "rft.abcdefgh1234"}
    assert error_from_response(response(200, body), endpoint=TOKEN) is None


def test_empty_2xx_body_is_success() -> None:
    """/oauth/revoke/ answers success with an empty body."""
    assert error_from_response(response(200, b""), endpoint="/v2/oauth/revoke/") is None


@pytest.mark.parametrize(
    ("status", "code", "cls", "retryable"),
    [
        (401, "access_token_invalid", AccessTokenInvalidError, False),
        (401, "scope_not_authorized", TikTokAuthError, False),
        (400, "scope_permission_missed", TikTokAuthError, False),
        (429, "rate_limit_exceeded", TikTokRateLimitedError, True),
        (500, "internal_error", TikTokServerError, True),
        (400, "invalid_params", TikTokInvalidRequestError, False),
        (400, "invalid_param", TikTokInvalidRequestError, False),
        (400, "invalid_publish_id", TikTokInvalidRequestError, False),
        (400, "token_not_authorized_for_specified_publish_id", TikTokInvalidRequestError, False),
        (403, "spam_risk_too_many_posts", TikTokPolicyError, False),
        (403, "spam_risk_user_banned_from_posting", TikTokPolicyError, False),
        (403, "spam_risk_too_many_pending_share", TikTokPolicyError, False),
        (403, "reached_active_user_cap", TikTokPolicyError, False),
        (403, "privacy_level_option_mismatch", TikTokPolicyError, False),
        (403, "unaudited_client_can_only_post_to_private_accounts", TikTokPolicyError, False),
        (403, "url_ownership_unverified", TikTokPolicyError, False),
    ],
)
def test_envelope_codes_map_to_classes(
    status: int, code: str, cls: type[TikTokApiError], retryable: bool
) -> None:
    """Each documented error.code becomes its class, with code, status, log_id and retryable."""
    resp = response(status, envelope(code, "details here", log_id="202210112248442CB9"))
    error = error_from_response(resp, endpoint=INIT)
    assert type(error) is cls
    assert isinstance(error, PublishError) and isinstance(error, ReelflowError)
    assert error.code == error.tiktok_code == code
    assert error.http_status == status
    assert error.log_id == "202210112248442CB9"
    assert error.retryable is retryable
    assert is_retryable(error) is retryable
    assert code in str(error) and "details here" in str(error) and INIT in str(error)


@pytest.mark.parametrize(
    "code",
    ["spam_risk_too_many_posts", "spam_risk_user_banned_from_posting", "reached_active_user_cap"],
)
def test_creator_info_policy_codes_with_http_200_are_errors(code: str) -> None:
    """creator_info returns spam and cap codes with HTTP 200 on purpose; they are still errors."""
    error = error_from_response(response(200, envelope(code)), endpoint=CREATOR_INFO)
    assert isinstance(error, TikTokPolicyError)
    assert error.http_status == 200
    assert not error.retryable


def test_access_token_invalid_is_distinguishable_for_one_refresh() -> None:
    """Only access_token_invalid says a refresh can help; scope errors do not."""
    expired = error_from_response(response(401, envelope("access_token_invalid")), endpoint=INIT)
    scope = error_from_response(response(401, envelope("scope_not_authorized")), endpoint=INIT)
    assert isinstance(expired, AccessTokenInvalidError) and expired.refreshable
    assert isinstance(scope, TikTokAuthError) and not isinstance(scope, AccessTokenInvalidError)
    assert not getattr(scope, "refreshable", False)


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (401, TikTokAuthError),
        (403, TikTokPolicyError),
        (404, TikTokInvalidRequestError),
        (429, TikTokRateLimitedError),
        (503, TikTokServerError),
    ],
)
def test_unknown_codes_fall_back_to_the_status(status: int, cls: type[TikTokApiError]) -> None:
    """A code this module does not know is classified by its HTTP status."""
    error = error_from_response(response(status, envelope("brand_new_code")), endpoint=INIT)
    assert type(error) is cls
    assert error.code == "brand_new_code"


def test_unknown_code_on_200_is_a_terminal_generic_error() -> None:
    """An unknown non-ok code with HTTP 200 is an error, terminal until someone reads it."""
    error = error_from_response(response(200, envelope("brand_new_code")), endpoint=INIT)
    assert type(error) is TikTokApiError
    assert not error.retryable


def test_ok_code_on_error_status_believes_the_status() -> None:
    """'ok' inside a 502 does not hide the failure."""
    error = error_from_response(response(502, envelope("ok")), endpoint=INIT)
    assert isinstance(error, TikTokServerError) and error.code == "http_502"


@pytest.mark.parametrize(
    ("oauth_error", "cls", "retryable"),
    [
        ("invalid_grant", TikTokAuthError, False),
        ("invalid_client", TikTokAuthError, False),
        ("access_denied", TikTokAuthError, False),
        ("invalid_scope", TikTokAuthError, False),
        ("unauthorized_client", TikTokAuthError, False),
        ("invalid_request", TikTokInvalidRequestError, False),
        ("unsupported_grant_type", TikTokInvalidRequestError, False),
        ("server_error", TikTokServerError, True),
        ("temporarily_unavailable", TikTokServerError, True),
    ],
)
@pytest.mark.parametrize("status", [200, 400, 401])
def test_flat_oauth_errors_key_on_the_body(
    oauth_error: str, cls: type[TikTokApiError], retryable: bool, status: int
) -> None:
    """OAuth errors use the flat shape and an undocumented status: the body's error decides."""
    body = {"error": oauth_error, "error_description": "Code expired", "log_id": "OAUTHLOG"}
    error = error_from_response(response(status, body), endpoint=TOKEN)
    assert type(error) is cls
    assert error.code == oauth_error
    assert error.log_id == "OAUTHLOG"
    assert error.retryable is retryable
    assert "Code expired" in str(error)


def test_top_level_v2_error_shape() -> None:
    """The general v2 error page's top-level code/message/log_id shape is understood."""
    body = {"code": "rate_limit_exceeded", "message": "slow down", "log_id": "TOPLOG"}
    error = error_from_response(response(429, body), endpoint=INIT)
    assert isinstance(error, TikTokRateLimitedError) and error.log_id == "TOPLOG"


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_non_json_5xx_is_a_retryable_server_error(status: int) -> None:
    """A gateway's HTML 5xx page becomes TikTokServerError with a short, redacted snippet."""
    html = b"<html><body><h1>502 Bad Gateway</h1>" + b"x" * 5000 + b"</body></html>"
    error = error_from_response(
        response(status, html, headers={"X-Tt-Logid": "HDRLOG"}), endpoint=INIT
    )
    assert isinstance(error, TikTokServerError)
    assert error.retryable and error.code == f"http_{status}"
    assert error.log_id == "HDRLOG"
    assert "502 Bad Gateway" in str(error)
    assert len(str(error)) < 400


def test_empty_error_status_uses_the_status() -> None:
    """A 500 with no body at all is a retryable server error."""
    error = error_from_response(response(500, b""), endpoint=INIT)
    assert isinstance(error, TikTokServerError)


def test_non_json_2xx_is_malformed_not_success() -> None:
    """A 200 HTML page from a proxy is not a success."""
    error = error_from_response(response(200, b"<html>captive portal</html>"), endpoint=INIT)
    assert isinstance(error, TikTokServerError) and error.code == "malformed_response"


def test_malformed_response_helper() -> None:
    """The client's 'success without data' error is a retryable server error with the log id."""
    error = malformed_response(response(200, envelope("ok")), endpoint=INIT, detail="publish_id")
    assert isinstance(error, TikTokServerError) and error.log_id == "LOG123"
    assert "publish_id" in str(error)


def test_rate_limit_honours_retry_after_seconds() -> None:
    """A Retry-After in seconds is exposed as retry_after_s."""
    resp = response(429, envelope("rate_limit_exceeded"), headers={"Retry-After": "17"})
    error = error_from_response(resp, endpoint=INIT)
    assert isinstance(error, TikTokRateLimitedError) and error.retry_after_s == 17.0


def test_rate_limit_honours_retry_after_http_date() -> None:
    """A Retry-After HTTP-date is turned into seconds from now."""
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=60), usegmt=True)
    resp = response(429, envelope("rate_limit_exceeded"), headers={"Retry-After": when})
    error = error_from_response(resp, endpoint=INIT)
    assert error is not None and error.retry_after_s is not None
    assert 50 <= error.retry_after_s <= 61


def test_rate_limit_without_retry_after() -> None:
    """TikTok documents no Retry-After; its absence is None, not 0."""
    error = error_from_response(response(429, envelope("rate_limit_exceeded")), endpoint=INIT)
    assert error is not None and error.retry_after_s is None


@pytest.mark.parametrize("status", [201, 206])
def test_put_success_statuses(status: int) -> None:
    """206 (more chunks) and 201 (all parts) are the only PUT successes."""
    headers = {"Content-Range": "bytes 0-9/100"}
    resp = response(status, headers=headers, method="PUT", url=UPLOAD_URL)
    assert error_from_response(resp, endpoint=UPLOAD_ENDPOINT) is None


@pytest.mark.parametrize(
    ("status", "cls", "retryable"),
    [
        (400, TikTokUploadError, False),
        (403, UploadUrlExpiredError, False),
        (404, UploadSessionNotFoundError, False),
        (416, UploadOutOfSyncError, True),
        (429, TikTokUploadError, True),
        (500, TikTokUploadError, True),
        (502, TikTokUploadError, True),
        (200, TikTokUploadError, False),
    ],
)
def test_put_statuses_map_to_upload_errors(
    status: int, cls: type[TikTokUploadError], retryable: bool
) -> None:
    """Every non-201/206 PUT status is a TikTokUploadError subclass with the right retry flag."""
    resp = response(status, b"", method="PUT", url=UPLOAD_URL)
    error = error_from_response(resp, endpoint=UPLOAD_ENDPOINT)
    assert type(error) is cls
    assert error.http_status == status
    assert error.retryable is retryable
    assert error.endpoint == UPLOAD_ENDPOINT


def test_put_is_detected_from_the_request_method_too() -> None:
    """A PUT reply is read with PUT rules even if the caller passed its own label."""
    resp = response(403, b"", method="PUT", url=UPLOAD_URL)
    assert isinstance(error_from_response(resp, endpoint="chunk"), UploadUrlExpiredError)


def test_416_carries_the_servers_acknowledged_range() -> None:
    """A 416 with Content-Range tells the caller where TikTok really is."""
    resp = response(416, headers={"Content-Range": "bytes 0-9999999/50000123"}, method="PUT")
    error = error_from_response(resp, endpoint=UPLOAD_ENDPOINT)
    assert isinstance(error, UploadOutOfSyncError)
    assert error.acknowledged == ContentRange(0, 9_999_999, 50_000_123)
    assert error.acknowledged_last_byte == 9_999_999
    assert error.next_byte == 10_000_000


def test_put_error_envelope_code_is_kept() -> None:
    """When a PUT reply carries the JSON envelope, its code and message are kept."""
    body = envelope("invalid_file_upload", "Content-Length does not match the body size")
    error = error_from_response(response(400, body, method="PUT"), endpoint=UPLOAD_ENDPOINT)
    assert type(error) is TikTokUploadError and not error.retryable
    assert error.code == "invalid_file_upload" and error.log_id == "LOG123"
    assert "Content-Length does not match" in str(error)


def test_416_without_content_range() -> None:
    """Without a Content-Range the acknowledged range is unknown, not guessed."""
    error = error_from_response(response(416, method="PUT"), endpoint=UPLOAD_ENDPOINT)
    assert isinstance(error, UploadOutOfSyncError)
    assert error.acknowledged is None and error.next_byte is None


def test_put_5xx_honours_retry_after() -> None:
    """A 503 on a PUT carries Retry-After when the server sent one."""
    resp = response(503, b"busy", headers={"Retry-After": "3"}, method="PUT")
    error = error_from_response(resp, endpoint=UPLOAD_ENDPOINT)
    assert isinstance(error, TikTokUploadError) and error.retry_after_s == 3.0


SECRETS = [
    "Xza123secret",
    "act.example12345Example12345Example",
    "rft.example12345Example12345Example",
    "THEAUTHCODE",
    "s3cr3t-client",
]


def test_messages_never_contain_tokens() -> None:
    """Tokens echoed by a server (query strings, JSON, bearer) never reach an error message."""
    message = (
        f"bad url {UPLOAD_URL} Authorization: Bearer act.example12345Example12345Example "
        '{"refresh_token": "rft.example12345Example12345Example"} code=THEAUTHCODE&'
        "client_secret=s3cr3t-client"
    )
    for resp, endpoint in [
        (response(400, envelope("invalid_params", message)), INIT),
        (response(400, {"error": "invalid_grant", "error_description": message}), TOKEN),
        (response(502, message.encode()), INIT),
        (response(500, message.encode(), method="PUT", url=UPLOAD_URL), UPLOAD_ENDPOINT),
    ]:
        error = error_from_response(resp, endpoint=endpoint)
        assert error is not None
        text = f"{error} {error.context} {error.args}"
        for secret in SECRETS:
            assert secret not in text, (secret, text)


def test_redact_keeps_harmless_text() -> None:
    """Redaction masks values, not the surrounding words."""
    assert redact("upload_token=abc&upload_id=1") == "upload_token=***&upload_id=1"
    assert redact("The chunk size is invalid") == "The chunk size is invalid"
    assert redact('{"access_token": "act.x"}') == '{"access_token": "***"}'


def test_publish_failed_is_terminal_except_internal() -> None:
    """FAILED is terminal, except fail_reason 'internal' which TikTok documents as retryable."""
    terminal = TikTokPublishFailedError("picture_size_check_failed", "v_pub_file~v2-1.1", "L1")
    internal = TikTokPublishFailedError("internal", "v_pub_file~v2-1.2")
    assert isinstance(terminal, TikTokApiError)
    assert not terminal.retryable and internal.retryable
    assert terminal.fail_reason == terminal.code == "picture_size_check_failed"
    assert terminal.publish_id == "v_pub_file~v2-1.1" and terminal.log_id == "L1"
    assert "picture_size_check_failed" in str(terminal)


@pytest.mark.parametrize(
    "error",
    [
        TikTokPublishFailedError("internal", "v_pub_file~v2-1.2", "L"),
        TikTokRateLimitedError(
            "x", code="rate_limit_exceeded", http_status=429, log_id="L", retry_after_s=2.0
        ),
        UploadOutOfSyncError("y", http_status=416, acknowledged=ContentRange(0, 9, 100)),
    ],
)
def test_errors_survive_pickling(error: TikTokApiError) -> None:
    """Prefect pickles task exceptions; every attribute a caller reads must survive."""
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error)
    assert str(copy) == str(error)
    assert copy.__dict__ == error.__dict__
    assert copy.retryable == error.retryable
