"""HTTP client for TikTok's Content Posting API v2 and its OAuth token endpoint.

This module owns the endpoints: the exact headers and body each call needs, and parsing replies
into the small dataclasses of :mod:`reelflow.tiktok.replies`. The session, the adapter and the
send live in :mod:`reelflow.tiktok.transport`, the token endpoint's forms and ``TokenSet`` in
:mod:`reelflow.tiktok.oauth`; their public names are importable from here as well. Every reply goes through
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

import json
from typing import IO, Any, Self

import requests

from reelflow.errors import IntegrityCheckError
from reelflow.tiktok.errors import (
    UPLOAD_ENDPOINT,
    error_from_response,
    malformed_response,
)
from reelflow.tiktok.oauth import TOKEN_PATH, TokenSet, code_form, refresh_form, request_tokens
from reelflow.tiktok.plan import file_upload_source, parse_content_range
from reelflow.tiktok.replies import (
    CreatorInfo,
    InitResult,
    PublishStatus,
    PutResult,
    int_or_none,
    json_object,
    post_ids,
)
from reelflow.tiktok.transport import (
    CONNECT_RETRIES,
    POOL_MAXSIZE,
    SEND_BLOCK_BYTES,
    ChunkReader,
    StreamingAdapter,
    Transport,
    _StreamingAdapter,
    build_session,
)

__all__ = [
    "CONNECT_RETRIES",
    "CREATOR_INFO_PATH",
    "DIRECT_POST_INIT_PATH",
    "INBOX_INIT_PATH",
    "JSON_CONTENT_TYPE",
    "POOL_MAXSIZE",
    "SEND_BLOCK_BYTES",
    "STATUS_PATH",
    "TOKEN_PATH",
    "CreatorInfo",
    "InitResult",
    "PublishStatus",
    "PutResult",
    "StreamingAdapter",
    "TikTokClient",
    "TokenSet",
    "_StreamingAdapter",
    "build_session",
]

JSON_CONTENT_TYPE = "application/json; charset=UTF-8"
CREATOR_INFO_PATH = "/v2/post/publish/creator_info/query/"
DIRECT_POST_INIT_PATH = "/v2/post/publish/video/init/"
INBOX_INIT_PATH = "/v2/post/publish/inbox/video/init/"
STATUS_PATH = "/v2/post/publish/status/fetch/"


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
        self._transport = Transport(self._session, (connect_timeout_s, read_timeout_s))

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
        form = code_form(self._client_key, self._client_secret, code, redirect_uri, code_verifier)
        return request_tokens(self._transport, self._api_base, form, previous_refresh_token=None)

    def refresh(self, refresh_token: str) -> TokenSet:
        """Get a new access token. TikTok may rotate the refresh token; the returned one wins.

        If the reply carries no refresh token, the one sent is kept, so a caller persisting the
        result never overwrites a good refresh token with an empty one.
        """
        form = refresh_form(self._client_key, self._client_secret, refresh_token)
        return request_tokens(
            self._transport, self._api_base, form, previous_refresh_token=refresh_token
        )

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
            max_video_post_duration_sec=int_or_none(duration),
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
            ids = post_ids(raw_ids)
        except ValueError:
            raise malformed_response(
                resp, endpoint=STATUS_PATH, detail="integer post ids"
            ) from None
        fail_reason = data.get("fail_reason")
        return PublishStatus(
            publish_id=publish_id,
            status=status,
            fail_reason=str(fail_reason) if fail_reason else None,
            uploaded_bytes=int_or_none(data.get("uploaded_bytes")),
            post_ids=ids,
            downloaded_bytes=int_or_none(data.get("downloaded_bytes")),
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
            raise IntegrityCheckError(
                f"invalid chunk range {first_byte}-{last_byte} of {total} bytes",
                first_byte=first_byte,
                last_byte=last_byte,
                total=total,
            )
        length = last_byte - first_byte + 1
        body: bytes | ChunkReader
        if isinstance(data, bytes | bytearray | memoryview):
            body = bytes(data)
            if len(body) != length:
                raise IntegrityCheckError(
                    f"chunk body is {len(body)} bytes but its range {first_byte}-{last_byte} "
                    f"needs {length}",
                    first_byte=first_byte,
                    last_byte=last_byte,
                )
        else:
            body = ChunkReader(data, length)
        headers = {
            "Content-Type": content_type,
            "Content-Length": str(length),
            "Content-Range": f"bytes {first_byte}-{last_byte}/{total}",
        }
        resp = self._transport.send(
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
        resp = self._transport.send(
            "POST", self._api_base + path, endpoint=path, headers=headers, data=payload
        )
        error = error_from_response(resp, endpoint=path)
        if error is not None:
            raise error
        envelope = json_object(resp, endpoint=path)
        data = envelope.get("data")
        if not isinstance(data, dict):
            raise malformed_response(resp, endpoint=path, detail="a data object")
        error_part = envelope.get("error")
        log_id = error_part.get("log_id") if isinstance(error_part, dict) else None
        return data, resp, str(log_id) if log_id else resp.headers.get("X-Tt-Logid")
