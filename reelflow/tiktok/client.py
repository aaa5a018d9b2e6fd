"""HTTP client for TikTok's Content Posting API v2 and its OAuth token endpoint.

This module owns the wire: one pooled ``requests.Session``, the exact headers each call needs,
and parsing replies into small dataclasses. Every reply goes through
:func:`reelflow.tiktok.errors.error_from_response`; every ``requests`` exception becomes a
:class:`~reelflow.tiktok.errors.TikTokTransportError` here, at the boundary.

What it must not do:

* retry. urllib3 re-tries only connection *establishment* (nothing was sent, so it is safe for
  any method). Everything else is the caller's decision, read from the error's ``retryable`` flag
  (Prefect retries the task); a hidden retry could re-send a chunk or re-run an init.
* plan chunks (that is :mod:`reelflow.tiktok.plan`), or keep state between calls: tokens, publish
  ids and upload URLs are passed in and handed back.
* log or quote a secret: access/refresh tokens, auth codes, the client secret and upload URLs
  (their ``upload_token``) never reach a log event or an exception message.
"""

from __future__ import annotations

import io
import json
import time
from dataclasses import dataclass, field
from typing import IO, Any, Self

import requests
import requests.auth
import structlog
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from reelflow.errors import IntegrityError
from reelflow.tiktok.errors import (
    UPLOAD_ENDPOINT,
    TikTokApiError,
    TikTokPublishFailed,
    TikTokTransportError,
    error_from_response,
    malformed_response,
    redact,
)
from reelflow.tiktok.plan import file_upload_source, parse_content_range

log = structlog.get_logger(__name__)

JSON_CONTENT_TYPE = "application/json; charset=UTF-8"
TOKEN_PATH = "/v2/oauth/token/"
CREATOR_INFO_PATH = "/v2/post/publish/creator_info/query/"
DIRECT_POST_INIT_PATH = "/v2/post/publish/video/init/"
INBOX_INIT_PATH = "/v2/post/publish/inbox/video/init/"
STATUS_PATH = "/v2/post/publish/status/fetch/"
CONNECT_RETRIES = 2  # only for failures to *establish* a connection: nothing was sent yet
POOL_MAXSIZE = 10
SEND_BLOCK_BYTES = 1 << 20  # file bodies go to the socket in 1 MiB pieces (urllib3: 16 KiB)


@dataclass(frozen=True, repr=False)
class TokenSet:
    """What the token endpoint returned. ``repr`` hides both tokens.

    Lifetimes differ between TikTok's pages (24 h/365 d vs 2 h/180 d), so callers store the
    ``expires_in`` values they receive rather than assuming any.
    """

    access_token: str
    refresh_token: str
    expires_in: int
    refresh_expires_in: int
    open_id: str
    scope: str  # comma-separated, as TikTok sends it

    @property
    def scopes(self) -> frozenset[str]:
        return frozenset(s.strip() for s in self.scope.split(",") if s.strip())

    def __repr__(self) -> str:
        return (
            f"TokenSet(open_id={self.open_id!r}, scope={self.scope!r}, "
            f"expires_in={self.expires_in}, refresh_expires_in={self.refresh_expires_in}, "
            "access_token=<redacted>, refresh_token=<redacted>)"
        )

    __str__ = __repr__


@dataclass(frozen=True)
class CreatorInfo:
    """``creator_info/query`` data; ``privacy_level_options`` bounds a Direct Post's privacy."""

    creator_username: str
    creator_nickname: str
    creator_avatar_url: str
    privacy_level_options: tuple[str, ...]
    comment_disabled: bool
    duet_disabled: bool
    stitch_disabled: bool
    max_video_post_duration_sec: int | None


@dataclass(frozen=True)
class InitResult:
    """A new publish session. ``upload_url`` carries an upload token, so ``repr`` hides it."""

    publish_id: str
    upload_url: str = field(repr=False)


@dataclass(frozen=True)
class PublishStatus:
    """``status/fetch`` data. ``post_ids`` are strings: TikTok's int64 ids exceed 2**53."""

    publish_id: str
    status: str
    fail_reason: str | None
    uploaded_bytes: int | None
    post_ids: list[str]
    downloaded_bytes: int | None = None
    log_id: str | None = None

    def failure(self) -> TikTokPublishFailed | None:
        """The typed error for a FAILED status (terminal unless ``internal``), else None."""
        if self.status != "FAILED":
            return None
        return TikTokPublishFailed(self.fail_reason or "", self.publish_id, self.log_id)


@dataclass(frozen=True)
class PutResult:
    """A chunk PUT TikTok accepted: 206 (more to come) or 201 (every byte received)."""

    http_status: int
    acknowledged_last_byte: int | None  # from the reply's Content-Range, read as inclusive

    @property
    def complete(self) -> bool:
        return self.http_status == 201


class _StreamingAdapter(HTTPAdapter):
    """An adapter whose connections stream file bodies in ``SEND_BLOCK_BYTES`` pieces.

    urllib3 reads a file-like body 16 KiB at a time by default: about 600 Python-level read and
    send calls per 10 MB chunk, which measurably slowed chunk PUTs streamed from the store.
    """

    def init_poolmanager(self, *args: Any, **pool_kwargs: Any) -> None:
        pool_kwargs.setdefault("blocksize", SEND_BLOCK_BYTES)
        super().init_poolmanager(*args, **pool_kwargs)


def build_session(*, pool_maxsize: int = POOL_MAXSIZE) -> requests.Session:
    """A session whose adapter pools connections and re-tries only connection establishment."""
    retry = Retry(
        total=CONNECT_RETRIES,
        connect=CONNECT_RETRIES,
        # Read errors after a request went out are retried only for methods that are idempotent
        # on the wire; we send none (POST, and PUT chunks whose resend TikTok answers with 416).
        read=0,
        status=0,
        other=0,
        redirect=0,
        allowed_methods=frozenset({"GET", "HEAD", "OPTIONS"}),
        backoff_factor=0.2,
        raise_on_status=False,
        respect_retry_after_header=False,
    )
    adapter = _StreamingAdapter(pool_connections=4, pool_maxsize=pool_maxsize, max_retries=retry)
    session = requests.Session()
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return session


class TikTokClient:
    """Calls TikTok's v2 API at ``api_base`` (``https://open.tiktokapis.com`` or a sandbox)."""

    def __init__(
        self,
        api_base: str,
        *,
        client_key: str,
        client_secret: str,
        session: requests.Session | None = None,
        connect_timeout_s: float = 5,
        read_timeout_s: float = 30,
    ) -> None:
        self._api_base = api_base.rstrip("/")
        self._client_key = client_key
        self._client_secret = client_secret
        self._owns_session = session is None
        self._session = session if session is not None else build_session()
        self._timeout = (connect_timeout_s, read_timeout_s)

    def __repr__(self) -> str:
        return f"TikTokClient({self._api_base!r}, client_key={self._client_key!r})"

    def close(self) -> None:
        """Close the session if this client created it (a passed-in session is the caller's)."""
        if self._owns_session:
            self._session.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ----- OAuth ------------------------------------------------------------------------------

    def exchange_code(
        self, code: str, redirect_uri: str, *, code_verifier: str | None = None
    ) -> TokenSet:
        """Trade an authorization code for tokens (``redirect_uri`` must match authorize's)."""
        form = {
            "client_key": self._client_key,
            "client_secret": self._client_secret,
            "code": code,
            "grant_type": "authorization_code",
            "redirect_uri": redirect_uri,
        }
        if code_verifier is not None:  # desktop/mobile PKCE only
            form["code_verifier"] = code_verifier
        return self._token_request(form, previous_refresh_token=None)

    def refresh(self, refresh_token: str) -> TokenSet:
        """Get a new access token. TikTok may rotate the refresh token; the returned one wins.

        If the reply carries no refresh token, the one sent is kept, so a caller persisting the
        result never overwrites a good refresh token with an empty one.
        """
        form = {
            "client_key": self._client_key,
            "client_secret": self._client_secret,
            "grant_type": "refresh_token",
            "refresh_token": refresh_token,
        }
        return self._token_request(form, previous_refresh_token=refresh_token)

    # ----- Content Posting --------------------------------------------------------------------

    def creator_info(self, access_token: str) -> CreatorInfo:
        """Query the creator's posting options (spam/cap refusals arrive as HTTP 200 errors)."""
        # The official example sends no body at all, only the two headers.
        data, resp, _ = self._post_json(CREATOR_INFO_PATH, access_token, None)
        options = data.get("privacy_level_options")
        if not isinstance(options, list) or not all(isinstance(o, str) for o in options):
            raise malformed_response(
                resp, endpoint=CREATOR_INFO_PATH, detail="privacy_level_options"
            )
        duration = data.get("max_video_post_duration_sec")
        return CreatorInfo(
            creator_username=str(data.get("creator_username") or ""),
            creator_nickname=str(data.get("creator_nickname") or ""),
            creator_avatar_url=str(data.get("creator_avatar_url") or ""),
            privacy_level_options=tuple(options),
            comment_disabled=bool(data.get("comment_disabled", False)),
            duet_disabled=bool(data.get("duet_disabled", False)),
            stitch_disabled=bool(data.get("stitch_disabled", False)),
            max_video_post_duration_sec=_int_or_none(duration),
        )

    def init_direct_post(
        self,
        access_token: str,
        *,
        post_info: dict[str, Any],
        video_size: int,
        chunk_size: int,
        total_chunk_count: int,
    ) -> InitResult:
        """Open a Direct Post FILE_UPLOAD session. Pass the numbers of a ``TikTokUploadPlan``."""
        body = {
            "post_info": post_info,
            "source_info": file_upload_source(video_size, chunk_size, total_chunk_count),
        }
        return self._init(DIRECT_POST_INIT_PATH, access_token, body)

    def init_inbox(
        self, access_token: str, *, video_size: int, chunk_size: int, total_chunk_count: int
    ) -> InitResult:
        """Open an Upload (inbox/draft) FILE_UPLOAD session; the user finishes it in the app."""
        # No post_info: the endpoint documents none and TikTok drops it (postiz-docs #231).
        body = {"source_info": file_upload_source(video_size, chunk_size, total_chunk_count)}
        return self._init(INBOX_INIT_PATH, access_token, body)

    def fetch_status(self, access_token: str, publish_id: str) -> PublishStatus:
        """Read a publish's status. FAILED is a normal reply here; see ``PublishStatus.failure``."""
        data, resp, log_id = self._post_json(STATUS_PATH, access_token, {"publish_id": publish_id})
        status = data.get("status")
        if not isinstance(status, str) or not status:
            raise malformed_response(resp, endpoint=STATUS_PATH, detail="status")
        # The field is spelled "publicaly" on the wire; accept the correct spelling as well.
        raw_ids = data.get("publicaly_available_post_id", data.get("publicly_available_post_id"))
        try:
            post_ids = _post_ids(raw_ids)
        except ValueError:
            raise malformed_response(
                resp, endpoint=STATUS_PATH, detail="integer post ids"
            ) from None
        fail_reason = data.get("fail_reason")
        return PublishStatus(
            publish_id=publish_id,
            status=status,
            fail_reason=str(fail_reason) if fail_reason else None,
            uploaded_bytes=_int_or_none(data.get("uploaded_bytes")),
            post_ids=post_ids,
            downloaded_bytes=_int_or_none(data.get("downloaded_bytes")),
            log_id=log_id,
        )

    def put_chunk(
        self,
        upload_url: str,
        *,
        data: bytes | bytearray | memoryview | IO[bytes],
        first_byte: int,
        last_byte: int,
        total: int,
        content_type: str,
    ) -> PutResult:
        """PUT bytes ``first_byte..last_byte`` (inclusive) of a ``total``-byte video.

        ``data`` is either exactly those bytes, or a binary file object positioned at
        ``first_byte``, from which exactly ``last_byte - first_byte + 1`` bytes are streamed.
        The upload URL is used verbatim and the request carries no Authorization header.
        Returns on 206/201; any other status raises a :class:`TikTokUploadError` subclass.
        """
        if not 0 <= first_byte <= last_byte < total:
            raise IntegrityError(
                f"invalid chunk range {first_byte}-{last_byte} of {total} bytes",
                first_byte=first_byte,
                last_byte=last_byte,
                total=total,
            )
        length = last_byte - first_byte + 1
        body: bytes | _ChunkReader
        if isinstance(data, bytes | bytearray | memoryview):
            body = bytes(data)
            if len(body) != length:
                raise IntegrityError(
                    f"chunk body is {len(body)} bytes but its range {first_byte}-{last_byte} "
                    f"needs {length}",
                    first_byte=first_byte,
                    last_byte=last_byte,
                )
        else:
            body = _ChunkReader(data, length)
        headers = {
            "Content-Type": content_type,
            "Content-Length": str(length),
            "Content-Range": f"bytes {first_byte}-{last_byte}/{total}",
        }
        resp = self._send(
            "PUT", upload_url, endpoint=UPLOAD_ENDPOINT, headers=headers, data=body, secret_url=True
        )
        error = error_from_response(resp, endpoint=UPLOAD_ENDPOINT)
        if error is not None:
            raise error
        acknowledged = parse_content_range(resp.headers.get("Content-Range"))
        return PutResult(resp.status_code, acknowledged.last if acknowledged else None)

    # ----- internals --------------------------------------------------------------------------

    def _init(self, path: str, access_token: str, body: dict[str, Any]) -> InitResult:
        data, resp, _ = self._post_json(path, access_token, body)
        publish_id, upload_url = data.get("publish_id"), data.get("upload_url")
        if not isinstance(publish_id, str) or not publish_id:
            raise malformed_response(resp, endpoint=path, detail="publish_id")
        if not isinstance(upload_url, str) or not upload_url:
            raise malformed_response(resp, endpoint=path, detail="upload_url")
        return InitResult(publish_id, upload_url)

    def _post_json(
        self, path: str, access_token: str, body: dict[str, Any] | None
    ) -> tuple[dict[str, Any], requests.Response, str | None]:
        headers = {"Authorization": f"Bearer {access_token}", "Content-Type": JSON_CONTENT_TYPE}
        payload = None
        if body is not None:
            # UTF-8 on the wire, as the declared charset says (titles carry emoji and CJK).
            payload = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
        resp = self._send(
            "POST", self._api_base + path, endpoint=path, headers=headers, data=payload
        )
        error = error_from_response(resp, endpoint=path)
        if error is not None:
            raise error
        envelope = _json_object(resp, endpoint=path)
        data = envelope.get("data")
        if not isinstance(data, dict):
            raise malformed_response(resp, endpoint=path, detail="a data object")
        error_part = envelope.get("error")
        log_id = error_part.get("log_id") if isinstance(error_part, dict) else None
        return data, resp, str(log_id) if log_id else resp.headers.get("X-Tt-Logid")

    def _token_request(
        self, form: dict[str, str], *, previous_refresh_token: str | None
    ) -> TokenSet:
        headers = {
            "Content-Type": "application/x-www-form-urlencoded",
            "Cache-Control": "no-cache",
        }
        resp = self._send(
            "POST", self._api_base + TOKEN_PATH, endpoint=TOKEN_PATH, headers=headers, data=form
        )
        error = error_from_response(resp, endpoint=TOKEN_PATH)
        if error is not None:
            raise error
        body = _json_object(resp, endpoint=TOKEN_PATH)
        if isinstance(body.get("data"), dict) and "access_token" in body["data"]:
            body = body["data"]  # tolerate the v2 envelope around the token fields
        access_token = body.get("access_token")
        refresh_token = body.get("refresh_token") or previous_refresh_token
        if not isinstance(access_token, str) or not access_token:
            raise malformed_response(resp, endpoint=TOKEN_PATH, detail="access_token")
        if not isinstance(refresh_token, str) or not refresh_token:
            raise malformed_response(resp, endpoint=TOKEN_PATH, detail="refresh_token")
        expires_in = _int_or_none(body.get("expires_in"))
        if expires_in is None:
            raise malformed_response(resp, endpoint=TOKEN_PATH, detail="expires_in")
        return TokenSet(
            access_token=access_token,
            refresh_token=refresh_token,
            expires_in=expires_in,
            refresh_expires_in=_int_or_none(body.get("refresh_expires_in")) or 0,
            open_id=str(body.get("open_id") or ""),
            scope=str(body.get("scope") or ""),
        )

    def _send(
        self,
        method: str,
        url: str,
        *,
        endpoint: str,
        headers: dict[str, str],
        data: Any,
        secret_url: bool = False,
    ) -> requests.Response:
        started = time.monotonic()
        failure: TikTokApiError | None = None
        try:
            resp = self._session.request(
                method,
                url,
                headers=headers,
                data=data,
                timeout=self._timeout,
                # A redirect would re-send a chunk or a bearer token elsewhere; TikTok sends none.
                allow_redirects=False,
                # An auth hook wins over session.auth and ~/.netrc: only our header is sent.
                auth=_OnlyOurAuthorization("Authorization" in headers),
            )
        except requests.RequestException as exc:
            failure = TikTokTransportError(
                f"{endpoint}: no reply from TikTok ({type(exc).__name__}: {redact(str(exc))})",
                code="timeout" if isinstance(exc, requests.Timeout) else "connection_error",
                http_status=None,
                endpoint=endpoint,
            )
            if not secret_url:
                raise failure from exc
        if failure is not None:
            # Raised outside the except block: the requests exception quotes the upload URL and
            # its token, so it must not ride along as __context__ into a logged traceback.
            log.warning("tiktok_call_failed", endpoint=endpoint, code=failure.code)
            raise failure
        log.debug(
            "tiktok_call_completed",
            endpoint=endpoint,
            method=method,
            http_status=resp.status_code,
            log_id=resp.headers.get("X-Tt-Logid"),
            elapsed_ms=round((time.monotonic() - started) * 1000),
        )
        return resp


class _ChunkReader:
    """Streams exactly ``length`` bytes from a file object (requests sizes it by ``__len__``).

    ``tell``/``seek`` are relative to the chunk start so urllib3 can rewind the body if it
    re-tries a connection that failed before anything was sent.
    """

    def __init__(self, raw: IO[bytes], length: int) -> None:
        self._raw = raw
        self._length = length
        self._sent = 0
        try:
            self._start: int | None = raw.tell()
        except (OSError, AttributeError):
            self._start = None

    def __len__(self) -> int:
        return self._length

    def tell(self) -> int:
        return self._sent

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence != io.SEEK_SET or self._start is None:
            raise OSError("chunk body can only be rewound to an absolute offset")
        self._raw.seek(self._start + offset)
        self._sent = offset
        return offset

    def read(self, size: int | None = -1) -> bytes:
        remaining = self._length - self._sent
        if remaining <= 0:
            return b""
        want = remaining if size is None or size < 0 else min(size, remaining)
        piece = self._raw.read(want)
        if not piece:
            # Sending fewer bytes than Content-Length would leave TikTok waiting; fail loudly.
            raise IntegrityError(
                f"chunk stream ended {remaining} bytes before its {self._length}-byte range",
                expected=self._length,
                sent=self._sent,
            )
        self._sent += len(piece)
        return piece


class _OnlyOurAuthorization(requests.auth.AuthBase):
    """requests auth hook: drop any Authorization header this module did not set itself.

    Upload URLs and the token endpoint must never see a bearer token, even one a shared
    session carries as a default header.
    """

    def __init__(self, keep: bool) -> None:
        self._keep = keep

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        if not self._keep:
            request.headers.pop("Authorization", None)
        return request


def _json_object(resp: requests.Response, *, endpoint: str) -> dict[str, Any]:
    # error_from_response already turned unparseable 2xx bodies into errors; this is the rest.
    try:
        body = json.loads(resp.content)
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise malformed_response(resp, endpoint=endpoint, detail="a JSON object")
    return body


def _int_or_none(value: Any) -> int | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


def _post_ids(raw: Any) -> list[str]:
    """Post ids as decimal strings; floats are refused, since they may already have lost digits."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raw = [raw]
    ids = []
    for item in raw:
        if isinstance(item, int) and not isinstance(item, bool):
            ids.append(str(item))
        elif isinstance(item, str) and item.strip().isdigit():
            ids.append(item.strip())
        else:
            raise ValueError(f"post id {item!r} is not an integer")
    return ids
