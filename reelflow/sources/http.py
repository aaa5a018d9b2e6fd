"""HTTP(S) URL sources: resolve a URL to a ``SourceRef`` pinned by its validator, and read
ranges of exactly that version.

The pin is a strong ``ETag`` sent back as ``If-Match`` + ``If-Range``, or else ``Last-Modified``
sent back as ``If-Unmodified-Since`` + ``If-Range``; every answer's own validator, status (206
only) and ``Content-Range`` are compared with it, and a mismatch is ``SourceChangedError``. A URL
with neither validator is refused (``unpinnable_source``), and so is a server that ignores
``Range`` (``no_ranges``): a 200 to a ranged, ``If-Range`` request is how a change shows. The GET
itself is the caller's (``Get``): the reader's, which goes through ``reelflow.safehttp`` and
charges the wait to the source's read deadline.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import requests
import urllib3

from reelflow import netguard
from reelflow.errors import (
    InputRejectedError,
    SourceChangedError,
    SourceNotFoundError,
    TransientStorageError,
)
from reelflow.safehttp import public_url
from reelflow.sources.ref import CONTENT_RANGE, READ_BLOCK_BYTES, SourceRef

# (url, headers) -> (the response, the URL it finally came from after redirects)
Get = Callable[[str, dict[str, str]], tuple[requests.Response, str]]


def resolve_http(source: str, get: Get) -> SourceRef:
    public = public_url(source)
    netguard.check_url(source)
    # A one-byte range GET: HEAD is not always allowed, and it also proves ranges work.
    resp, final = get(source, {"Range": "bytes=0-0"})
    resp.close()
    status = resp.status_code
    if status in (404, 410):
        raise SourceNotFoundError(f"{public} answered HTTP {status}")
    if status >= 500 or status == 429:
        raise TransientStorageError(f"{public} answered HTTP {status}")
    unsatisfiable = resp.headers.get("Content-Range", "").strip() == "bytes */0"
    if status >= 400 and not (status == 416 and unsatisfiable):
        raise InputRejectedError(f"{public} answered HTTP {status}", reason="unreadable")
    if status == 200:
        raise InputRejectedError(
            f"{public} ignores range requests; reelflow reads sources in ranges",
            reason="no_ranges",
        )
    refuse_encoded(resp, public)
    m = CONTENT_RANGE.match(resp.headers.get("Content-Range", "").strip())
    size = 0 if status == 416 else int(m.group(3)) if m else -1
    if size < 0:
        raise InputRejectedError(f"{public} does not report its size", reason="unreadable")
    etag = resp.headers.get("ETag")
    strong = etag if etag and not etag.startswith("W/") else None
    modified = None if strong else resp.headers.get("Last-Modified")
    if size and not (strong or modified):
        raise InputRejectedError(
            f"{public} sends neither a strong ETag nor Last-Modified, so its content "
            "cannot be pinned for the run",
            reason="unpinnable_source",
        )
    return SourceRef(
        uri=final,
        kind="http",
        size_bytes=size,
        fingerprint=f"http:{public}:{strong or modified or ''}:{size}",
        name=(public.split("?", 1)[0].rsplit("/", 1)[-1] or "video"),
        public_uri=public,
        etag=strong,
        last_modified=modified,
    )


def pin_headers(ref: SourceRef) -> dict[str, str]:
    if ref.etag:
        return {"If-Match": ref.etag, "If-Range": ref.etag}
    if ref.last_modified:
        return {"If-Unmodified-Since": ref.last_modified, "If-Range": ref.last_modified}
    return {}


def iter_http(ref: SourceRef, start: int, length: int, get: Get) -> Iterator[bytes]:
    end = start + length - 1
    headers = {"Range": f"bytes={start}-{end}", **pin_headers(ref)}
    resp, _ = get(ref.uri, headers)
    with resp:
        check_http_pin(ref, resp, start, end)
        got = 0
        try:
            while got < length:
                block = resp.raw.read1(min(READ_BLOCK_BYTES, length - got))
                if not block:
                    break
                got += len(block)
                yield block
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
            raise TransientStorageError(
                f"reading {ref.public_uri} failed: {type(exc).__name__}"
            ) from exc


def refuse_encoded(resp: requests.Response, public: str) -> None:
    encoding = resp.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise InputRejectedError(
            f"{public} sends the video {encoding}-encoded; reelflow reads raw bytes",
            reason="encoded_source",
        )


def check_http_pin(ref: SourceRef, resp: requests.Response, start: int, end: int) -> None:
    """The answer to a pinned range read must be that range of the pinned version."""
    status, public = resp.status_code, ref.public_uri
    if status == 412:
        raise SourceChangedError(f"{public} changed since the run started (HTTP 412)")
    if status == 200:
        raise SourceChangedError(
            f"{public} answered a pinned range read with the whole object: it changed"
        )
    if status in (404, 410):
        raise SourceChangedError(f"{public} is gone since the run started (HTTP {status})")
    if status != 206:
        raise TransientStorageError(f"{public} answered HTTP {status}")
    refuse_encoded(resp, public)
    m = CONTENT_RANGE.match(resp.headers.get("Content-Range", "").strip())
    if not m or (int(m.group(1)), int(m.group(3))) != (start, ref.size_bytes):
        raise SourceChangedError(f"{public} answered another range or size: it changed")
    # Compared when the answer carries one (If-Match / If-Unmodified-Since cover the rest).
    etag, modified = resp.headers.get("ETag"), resp.headers.get("Last-Modified")
    if (ref.etag and etag and etag != ref.etag) or (
        ref.last_modified and modified and modified != ref.last_modified
    ):
        raise SourceChangedError(f"{public} answered with another version: it changed")
