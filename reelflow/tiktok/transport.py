"""The wire under the TikTok client: one pooled ``requests.Session`` and one ``send``.

This module owns how a request goes out: the adapter (file bodies streamed in 1 MiB pieces,
connection *establishment* re-tried and nothing else), the auth hook that lets only the
client's own ``Authorization`` header through, a chunk body read from a file object, and the
mapping of every ``requests`` exception to :class:`TikTokTransportError`, here, at the boundary.

It must not retry a request that went out (a hidden retry could re-send a chunk or re-run an
init), parse replies (that is the client's), or quote a secret: the requests exception for an
upload URL quotes its ``upload_token``, so it never rides along as ``__context__``.
"""

from __future__ import annotations

import io
import time
from typing import IO, Any

import requests
import requests.auth
import structlog
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from reelflow.errors import IntegrityCheckError
from reelflow.tiktok.errors import TikTokApiError, TikTokTransportError, redact

# The name the events had before the split: log routing and filters select on it.
log = structlog.get_logger("reelflow.tiktok.client")

CONNECT_RETRIES = 2  # only for failures to *establish* a connection: nothing was sent yet
POOL_MAXSIZE = 10
SEND_BLOCK_BYTES = 1 << 20  # file bodies go to the socket in 1 MiB pieces (urllib3: 16 KiB)


class StreamingAdapter(HTTPAdapter):
    """An adapter whose connections stream file bodies in ``SEND_BLOCK_BYTES`` pieces.

    urllib3 reads a file-like body 16 KiB at a time by default: about 600 Python-level read and
    send calls per 10 MB chunk, which measurably slowed chunk PUTs streamed from the store.
    """

    def init_poolmanager(self, *args: Any, **pool_kwargs: Any) -> None:
        pool_kwargs.setdefault("blocksize", SEND_BLOCK_BYTES)
        super().init_poolmanager(*args, **pool_kwargs)


_StreamingAdapter = StreamingAdapter  # the name it had before it was public


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
    adapter = StreamingAdapter(pool_connections=4, pool_maxsize=pool_maxsize, max_retries=retry)
    session = requests.Session()
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return session


class Transport:
    """Sends one request on ``session`` with ``timeout``; the session's lifetime is the caller's."""

    def __init__(self, session: requests.Session, timeout: tuple[float, float]) -> None:
        self.session = session
        self.timeout = timeout

    def send(
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
            resp = self.session.request(
                method,
                url,
                headers=headers,
                data=data,
                timeout=self.timeout,
                # A redirect would re-send a chunk or a bearer token elsewhere; TikTok sends none.
                allow_redirects=False,
                # An auth hook wins over session.auth and ~/.netrc: only our header is sent.
                auth=OnlyOurAuthorization("Authorization" in headers),
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


class ChunkReader:
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
            raise IntegrityCheckError(
                f"chunk stream ended {remaining} bytes before its {self._length}-byte range",
                expected=self._length,
                sent=self._sent,
            )
        self._sent += len(piece)
        return piece


class OnlyOurAuthorization(requests.auth.AuthBase):
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
