"""Typed TikTok errors, and the one place a TikTok HTTP response becomes one.

Every reply TikTok can give (the ``{data, error{code, message, log_id}}`` envelope, the flat OAuth
``{error, error_description, log_id}`` body, a non-JSON 5xx page from a gateway, or the bare status
of an upload PUT) goes through :func:`error_from_response`, which returns a typed error or None
for success. Callers act on the class and on ``retryable``; nothing else decides retries.

    PublishError (reelflow.errors)
    └── TikTokApiError               code, http_status, log_id, retryable, retry_after_s, endpoint
        ├── TikTokAuthError          terminal: scope missing, OAuth grant/client refused
        │   └── AccessTokenInvalidError   terminal for this token: refresh once, then call again
        ├── TikTokRateLimitedError        retryable: 429 rate_limit_exceeded (honour retry_after_s)
        ├── TikTokServerError        retryable: 5xx, internal_error, OAuth server_error, bad body
        ├── TikTokTransportError     retryable: no HTTP reply at all (refused, reset, timeout)
        ├── TikTokPolicyError        terminal: spam/cap/privacy/audit/URL-ownership refusals
        ├── TikTokInvalidRequestError     terminal: invalid_params, invalid_publish_id, invalid_request
        ├── TikTokUploadError        a chunk PUT was refused (retryable for 5xx and 429)
        │   ├── UploadUrlExpiredError     terminal for this session: 403, the URL's hour is over
        │   ├── UploadSessionNotFoundError  terminal: 404, no upload task matches the URL
        │   └── UploadOutOfSyncError      416: Content-Range disagrees with TikTok's progress
        └── TikTokPublishFailedError      status FAILED; terminal unless fail_reason is "internal"

This module must not send requests and must never put a secret in a message: access, refresh and
upload tokens, authorization codes and client secrets are redacted by :func:`redact`, and upload
URLs are never quoted at all.

One module on purpose, though it is past 450 lines: the tree above, the code→class table
(``_CODE_CLASSES``) and the response readers that pick a class are one job, and are read
together: a new TikTok code is a class, a table row and a test, and a split would put the table
a file away from the classes it names. There is no I/O here to move out.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any

from reelflow.errors import PublishError
from reelflow.logging import redact_text
from reelflow.tiktok.plan import ContentRange, parse_content_range

if TYPE_CHECKING:
    import requests

UPLOAD_ENDPOINT = "upload"  # the `endpoint` label for chunk PUTs (their URL holds a secret)
LOG_ID_HEADER = "X-Tt-Logid"  # TikTok also returns the log id as a header; used as a fallback
_SNIPPET_CHARS = 160


class TikTokApiError(PublishError):
    """TikTok refused a call; ``code`` is TikTok's error code, or ``http_<status>`` if none came."""

    retryable = False

    def __init__(
        self,
        message: str,
        *,
        code: str,
        http_status: int | None,
        log_id: str | None = None,
        retryable: bool | None = None,
        retry_after_s: float | None = None,
        endpoint: str | None = None,
    ) -> None:
        message = redact(message)
        super().__init__(
            message, tiktok_code=code, http_status=http_status, log_id=log_id, endpoint=endpoint
        )
        self.code = code
        self.http_status = http_status
        self.log_id = log_id
        if retryable is not None:
            self.retryable = retryable
        self.retry_after_s = retry_after_s
        self.endpoint = endpoint

    @property
    def tiktok_code(self) -> str:
        return self.code

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword-only constructors break Exception's default pickling, and Prefect pickles the
        # exceptions it stores in task states.
        return (_rebuild, (type(self), self.message, dict(self.__dict__)))


def _rebuild(cls: type[TikTokApiError], message: str, state: dict[str, Any]) -> TikTokApiError:
    error = cls.__new__(cls, message)
    error.__dict__.update(state)
    return error


class TikTokAuthError(TikTokApiError):
    """The token, its scopes or the OAuth grant were refused; the user may need to re-authorize."""


class AccessTokenInvalidError(TikTokAuthError):
    """401 ``access_token_invalid``: the access token is unknown or expired.

    Not retryable with the same token, but a caller holding a refresh token should refresh once
    and call again; ``refreshable`` marks exactly this case.
    """

    refreshable = True


class TikTokRateLimitedError(TikTokApiError):
    """429 ``rate_limit_exceeded`` (per token, one-minute sliding window)."""

    retryable = True


class TikTokServerError(TikTokApiError):
    """5xx, ``internal_error``, OAuth ``server_error``/``temporarily_unavailable``, or a reply
    that is not the JSON TikTok documents. Retrying an init is safe: an unused publish session
    posts nothing and expires after an hour."""

    retryable = True


class TikTokTransportError(TikTokApiError):
    """No HTTP reply came back (connection refused or reset, timeout); ``http_status`` is None.

    The request may or may not have reached TikTok. Retrying an init or a status fetch is safe; a
    resent chunk PUT is answered 416 if the first copy landed, which the caller reconciles.
    """

    retryable = True


class TikTokPolicyError(TikTokApiError):
    """TikTok refused on policy (spam risk, caps, privacy option, unaudited client, URL ownership).

    Terminal: the same request gets the same answer until a person changes something.
    """


class TikTokInvalidRequestError(TikTokApiError):
    """The request itself is wrong (``invalid_params``, unknown ``publish_id``, OAuth
    ``invalid_request``); retrying cannot help."""


class TikTokUploadError(TikTokApiError):
    """A chunk PUT got a status other than 206/201. Retryable for 5xx and 429 only."""

    def __init__(
        self,
        message: str,
        *,
        http_status: int | None,
        code: str | None = None,
        log_id: str | None = None,
        retryable: bool | None = None,
        retry_after_s: float | None = None,
        acknowledged: ContentRange | None = None,
    ) -> None:
        if retryable is None and type(self) is TikTokUploadError:
            retryable = http_status is not None and (http_status >= 500 or http_status == 429)
        super().__init__(
            message,
            code=code or f"http_{http_status}",
            http_status=http_status,
            log_id=log_id,
            retryable=retryable,
            retry_after_s=retry_after_s,
            endpoint=UPLOAD_ENDPOINT,
        )
        self.acknowledged = acknowledged

    @property
    def acknowledged_last_byte(self) -> int | None:
        """Last byte TikTok says it holds (inclusive), from the reply's Content-Range, if any."""
        return self.acknowledged.last if self.acknowledged is not None else None


class UploadUrlExpiredError(TikTokUploadError):
    """403 on a PUT: the upload URL's one-hour validity is over; a new init is needed."""


class UploadSessionNotFoundError(TikTokUploadError):
    """404 on a PUT: TikTok has no upload task for this URL."""


class UploadOutOfSyncError(TikTokUploadError):
    """416 on a PUT: the Content-Range did not start where TikTok's progress is.

    ``acknowledged`` holds the range TikTok reported, when it sent one. Resending the same range
    cannot help, but a retry that first reconciles (this range, or ``uploaded_bytes`` from
    ``status/fetch``) and resumes from :func:`~reelflow.tiktok.plan.first_unacknowledged_chunk`
    can, hence ``retryable``.
    """

    retryable = True

    @property
    def next_byte(self) -> int | None:
        """Offset TikTok expects next, when the reply said how far it got."""
        last = self.acknowledged_last_byte
        return None if last is None else last + 1


class TikTokPublishFailedError(TikTokApiError):
    """``status/fetch`` reported FAILED (HTTP 200, ``error.code`` ok) with ``fail_reason``.

    Only ``internal`` is retryable (TikTok documents it so); a retry is a new init and upload.
    """

    def __init__(self, fail_reason: str, publish_id: str, log_id: str | None = None) -> None:
        super().__init__(
            f"TikTok publish {publish_id} failed: {fail_reason or 'no reason given'}",
            code=fail_reason,
            http_status=200,
            log_id=log_id,
            retryable=fail_reason == "internal",
            endpoint="/v2/post/publish/status/fetch/",
        )
        self.fail_reason = fail_reason
        self.publish_id = publish_id


# Codes from the Content Posting reference, the v2 error table and the OAuth page (notes §4, §6).
# A code decides the class; the HTTP status is only a fallback, because creator_info returns the
# spam and cap codes with HTTP 200 and OAuth error statuses are undocumented.
_CODE_CLASSES: dict[str, type[TikTokApiError]] = {
    "access_token_invalid": AccessTokenInvalidError,
    "scope_not_authorized": TikTokAuthError,
    "scope_permission_missed": TikTokAuthError,
    "rate_limit_exceeded": TikTokRateLimitedError,
    "internal_error": TikTokServerError,
    "invalid_params": TikTokInvalidRequestError,
    "invalid_param": TikTokInvalidRequestError,  # the reference pages' spelling
    "invalid_file_upload": TikTokInvalidRequestError,
    "invalid_publish_id": TikTokInvalidRequestError,
    "token_not_authorized_for_specified_publish_id": TikTokInvalidRequestError,
    "publish_not_cancellable": TikTokInvalidRequestError,
    "app_version_check_failed": TikTokInvalidRequestError,
    "spam_risk_too_many_posts": TikTokPolicyError,
    "spam_risk_user_banned_from_posting": TikTokPolicyError,
    "spam_risk_too_many_pending_share": TikTokPolicyError,
    "reached_active_user_cap": TikTokPolicyError,
    "unaudited_client_can_only_post_to_private_accounts": TikTokPolicyError,
    "url_ownership_unverified": TikTokPolicyError,
    "privacy_level_option_mismatch": TikTokPolicyError,
    # OAuth (flat body). invalid_grant covers a bad, expired or revoked code or refresh token.
    "invalid_grant": TikTokAuthError,
    "invalid_client": TikTokAuthError,
    "unauthorized_client": TikTokAuthError,
    "access_denied": TikTokAuthError,
    "invalid_scope": TikTokAuthError,
    "invalid_request": TikTokInvalidRequestError,
    "unsupported_grant_type": TikTokInvalidRequestError,
    "unsupported_response_type": TikTokInvalidRequestError,
    "server_error": TikTokServerError,
    "temporarily_unavailable": TikTokServerError,
}


def error_from_response(resp: requests.Response, *, endpoint: str) -> TikTokApiError | None:
    """Turn any TikTok reply into a typed error, or None when it is a success.

    ``endpoint`` labels the call in messages (an API path such as ``/v2/oauth/token/``, or
    :data:`UPLOAD_ENDPOINT` for chunk PUTs; upload URLs carry a token and are never quoted).
    """
    status = resp.status_code
    method = getattr(getattr(resp, "request", None), "method", None)
    if endpoint == UPLOAD_ENDPOINT or method == "PUT":
        return _upload_error(resp)
    ok_status = 200 <= status < 300
    header_log_id = resp.headers.get(LOG_ID_HEADER)
    body = _json_body(resp)

    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict):  # the Content Posting envelope
            code = str(error.get("code") or "")
            message = str(error.get("message") or "")
            log_id = _str_or_none(error.get("log_id") or error.get("logid")) or header_log_id
        elif isinstance(error, str) and error:  # OAuth's flat error body
            code = error
            message = str(body.get("error_description") or "")
            log_id = _str_or_none(body.get("log_id")) or header_log_id
        elif isinstance(body.get("code"), str) and "data" not in body:
            # The general v2 error page shows code/message/log_id at the top level.
            code = body["code"]
            message = str(body.get("message") or "")
            log_id = _str_or_none(body.get("log_id")) or header_log_id
        else:
            code, message, log_id = "", "", header_log_id
        if code in ("", "ok"):
            if ok_status:
                return None
            code = f"http_{status}"  # "ok" on an error status: believe the status
        return _build(resp, endpoint, code, message, log_id)

    if body is _EMPTY:
        if ok_status:
            return None  # e.g. /v2/oauth/revoke/ answers success with an empty body
        return _build(resp, endpoint, f"http_{status}", "empty body", header_log_id)

    # Not JSON: a gateway page (502 HTML), or a 2xx no client can parse.
    snippet = _snippet(resp)
    if ok_status:
        return TikTokServerError(
            f"{endpoint}: HTTP {status} with a body that is not TikTok JSON: {snippet}",
            code="malformed_response",
            http_status=status,
            log_id=header_log_id,
            endpoint=endpoint,
        )
    return _build(resp, endpoint, f"http_{status}", snippet, header_log_id)


def malformed_response(resp: requests.Response, *, endpoint: str, detail: str) -> TikTokServerError:
    """A success envelope whose ``data`` lacks what the endpoint documents (client's use)."""
    return TikTokServerError(
        f"{endpoint}: HTTP {resp.status_code} success without {detail}",
        code="malformed_response",
        http_status=resp.status_code,
        log_id=_log_id_of(resp),
        endpoint=endpoint,
    )


def redact(text: str) -> str:
    """Mask token-like values in ``text`` with reelflow's one redactor (reelflow.logging)."""
    return redact_text(text)


_EMPTY = object()
_NOT_JSON = object()


def _json_body(resp: requests.Response) -> Any:
    content = resp.content or b""
    if not content.strip():
        return _EMPTY
    try:
        return json.loads(content)
    except (ValueError, UnicodeDecodeError):
        return _NOT_JSON


def _build(
    resp: requests.Response, endpoint: str, code: str, message: str, log_id: str | None
) -> TikTokApiError:
    status = resp.status_code
    cls = _CODE_CLASSES.get(code) or _class_for_status(status)
    text = f"{endpoint}: {code} (HTTP {status})"
    if message:
        text += f": {message}"
    if log_id:
        text += f" [log_id {log_id}]"
    retry_after = _retry_after_s(resp) if cls is TikTokRateLimitedError or status >= 500 else None
    return cls(
        text,
        code=code,
        http_status=status,
        log_id=log_id,
        retry_after_s=retry_after,
        endpoint=endpoint,
    )


def _class_for_status(status: int) -> type[TikTokApiError]:
    if status == 401:
        return TikTokAuthError
    if status == 403:
        return TikTokPolicyError
    if status == 429:
        return TikTokRateLimitedError
    if status >= 500:
        return TikTokServerError
    if 400 <= status < 500:
        return TikTokInvalidRequestError
    return TikTokApiError  # an unknown non-ok code on a 2xx: terminal until someone reads it


def _upload_error(resp: requests.Response) -> TikTokUploadError | None:
    status = resp.status_code
    if status in (201, 206):
        return None
    acknowledged = parse_content_range(resp.headers.get("Content-Range"))
    cls: type[TikTokUploadError] = {
        403: UploadUrlExpiredError,
        404: UploadSessionNotFoundError,
        416: UploadOutOfSyncError,
    }.get(status, TikTokUploadError)
    meaning = {
        400: "malformed headers or Content-Length does not match the body",
        403: "the upload URL has expired",
        404: "no upload task matches the URL",
        416: "Content-Range does not match the upload progress",
    }.get(status, "server error, retry this chunk" if status >= 500 else "unexpected status")
    text = f"chunk PUT: HTTP {status}: {meaning}"
    if acknowledged is not None:
        text += f" (TikTok reports {resp.headers.get('Content-Range')})"
    body = _json_body(resp)
    code = None
    # The PUT reply body is undocumented; use an envelope's code and message when one is there.
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and error.get("code") not in (None, "", "ok"):
        code = str(error["code"])
        text += f": {code}"
        if error.get("message"):
            text += f": {error['message']}"
    elif body is _NOT_JSON:
        text += f": {_snippet(resp)}"
    log_id = _log_id_of(resp)
    if log_id:
        text += f" [log_id {log_id}]"
    return cls(
        text,
        http_status=status,
        code=code,
        log_id=log_id,
        retry_after_s=_retry_after_s(resp) if status == 429 or status >= 500 else None,
        acknowledged=acknowledged,
    )


def _log_id_of(resp: requests.Response) -> str | None:
    body = _json_body(resp)
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and (error.get("log_id") or error.get("logid")):
            return _str_or_none(error.get("log_id") or error.get("logid"))
        if body.get("log_id"):
            return _str_or_none(body.get("log_id"))
    return resp.headers.get(LOG_ID_HEADER)


def _retry_after_s(resp: requests.Response) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP-date); TikTok documents none."""
    value = resp.headers.get("Retry-After")
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _snippet(resp: requests.Response) -> str:
    text = (resp.content or b"")[: _SNIPPET_CHARS * 4].decode("utf-8", "replace")
    text = " ".join(text.split())[:_SNIPPET_CHARS]
    return redact(text) or "(empty body)"


def _str_or_none(value: Any) -> str | None:
    return None if value is None or value == "" else str(value)
