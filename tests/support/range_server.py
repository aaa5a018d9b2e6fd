"""A small real HTTP server on 127.0.0.1 for URL-source tests (issue 8 §1, §2).

Serves byte ranges of in-memory objects with ETag / Last-Modified and honours If-Match,
If-Unmodified-Since and If-Range like a careful origin would, unless an object is told to lie.
It records every request (path, headers), so tests can prove what was (never) fetched.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")


@dataclass
class Obj:
    body: bytes
    etag: str | None = '"v1"'
    last_modified: str | None = None
    ranges: bool = True
    # Served instead of ``body`` to full-range GETs from the ``swap_from``-th one on (1-based),
    # with the same validators: a source that lies about its version.
    swap_body: bytes | None = None
    swap_from: int = 0
    # Served instead of ``body`` when the User-Agent contains this string.
    ua_marker: str | None = None
    ua_body: bytes | None = None
    full_gets: int = 0


@dataclass
class RangeServer:
    objects: dict[str, Obj] = field(default_factory=dict)
    redirects: dict[str, str] = field(default_factory=dict)
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    port: int = 0

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def hostport(self) -> str:
        return f"127.0.0.1:{self.port}"

    def paths_requested(self) -> list[str]:
        return [p for p, _ in self.requests]


def _handler(state: RangeServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            return

        def do_GET(self) -> None:  # noqa: N802
            state.requests.append((self.path, {k: v for k, v in self.headers.items()}))
            path = self.path.split("?", 1)[0]
            if path in state.redirects:
                self.send_response(302)
                self.send_header("Location", state.redirects[path])
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            obj = state.objects.get(path)
            if obj is None:
                self._plain(404)
                return
            if (m := self.headers.get("If-Match")) and m != obj.etag:
                self._plain(412)
                return
            if (u := self.headers.get("If-Unmodified-Since")) and u != obj.last_modified:
                self._plain(412)
                return
            body = obj.body
            if obj.ua_marker and obj.ua_marker in self.headers.get("User-Agent", ""):
                body = obj.ua_body or b""
            size = len(body)
            rng = _RANGE.match(self.headers.get("Range", "")) if obj.ranges else None
            if_range = self.headers.get("If-Range")
            if rng and if_range and if_range not in (obj.etag, obj.last_modified):
                rng = None  # changed: the whole new object, as RFC 9110 says
            if rng:
                start = int(rng.group(1))
                end = min(int(rng.group(2)), size - 1) if rng.group(2) else size - 1
                if start >= size:
                    self._plain(416, {"Content-Range": f"bytes */{size}"})
                    return
                if start == 0 and end == size - 1:
                    obj.full_gets += 1
                    if obj.swap_body is not None and obj.full_gets >= obj.swap_from:
                        body = obj.swap_body
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
                chunk = body[start : end + 1]
            else:
                self.send_response(200)
                chunk = body
            if obj.etag:
                self.send_header("ETag", obj.etag)
            if obj.last_modified:
                self.send_header("Last-Modified", obj.last_modified)
            self.send_header("Content-Length", str(len(chunk)))
            self.end_headers()
            with suppress(OSError):
                self.wfile.write(chunk)

        def _plain(self, status: int, headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", "0")
            self.end_headers()

    return Handler


@contextmanager
def range_server() -> Iterator[RangeServer]:
    state = RangeServer()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    server.daemon_threads = True
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
