"""A loopback relay that serves one object's bytes to ffprobe/ffmpeg (issue 8 §1, §2).

ffmpeg never gets a user's URL or path: it gets ``http://127.0.0.1:<port>/<random token>/…``,
served from a range reader that reelflow controls (``SourceReader``'s pinned, address-checked,
deadline-bounded reads, or the store's own range reads). So ffmpeg cannot follow a redirect,
resolve a name, send its ``Lavf`` user agent to the source, see credentials, or read bytes of a
version other than the one pinned for the run. Together with the explicit demuxer and protocol
whitelist in ``reelflow.media`` this is what keeps indirection (playlists, concat, references)
out of reach.

A reelflow error raised by the reader while serving (the source changed, a refused address, the
read deadline) cuts the response short and is re-raised when the relay closes, so the caller
sees the typed error rather than ffprobe's "invalid data".
"""

from __future__ import annotations

import contextlib
import re
import secrets
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import quote

from reelflow.errors import ReelflowError

RangeReader = Callable[[int, int], Iterator[bytes]]
_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")
RELAY_POLL_S = 0.02  # how soon serve_forever notices shutdown(); an idle wakeup costs ~nothing


class ByteRelay:
    """``with ByteRelay(size, read) as relay:`` → ``relay.url`` until the block ends."""

    def __init__(self, size_bytes: int, read: RangeReader, *, name: str = "media") -> None:
        self.size_bytes, self._read = size_bytes, read
        self._path = f"/{secrets.token_urlsafe(18)}/{quote(name or 'media', safe='')}"
        self.error: ReelflowError | None = None
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        relay = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                return  # ffmpeg's requests are not worth a log line each

            def do_HEAD(self) -> None:  # noqa: N802
                self._answer(body=False)

            def do_GET(self) -> None:  # noqa: N802
                self._answer(body=True)

            def _answer(self, *, body: bool) -> None:
                size = relay.size_bytes
                if self.path != relay._path or relay.error is not None:
                    self.send_error(404 if relay.error is None else 502)
                    return
                start, end = 0, size - 1
                header = self.headers.get("Range")
                if header:
                    m = _RANGE.match(header.strip())
                    if not m or int(m.group(1)) >= size:
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{size}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    start = int(m.group(1))
                    end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
                self.send_response(206 if header else 200)
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(end - start + 1))
                if header:
                    self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
                self.end_headers()
                if body and end >= start:
                    self._stream(start, end - start + 1)

            def _stream(self, start: int, length: int) -> None:
                blocks = relay._read(start, length)
                try:
                    for block in blocks:
                        self.wfile.write(block)
                except ReelflowError as exc:
                    relay.error = relay.error or exc
                    self.close_connection = True
                except OSError:  # ffmpeg hung up (it seeks by closing and asking again)
                    self.close_connection = True
                finally:
                    close = getattr(blocks, "close", None)
                    if close is not None:
                        with contextlib.suppress(Exception):
                            close()

        return Handler

    def __enter__(self) -> ByteRelay:
        server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        server.daemon_threads = True
        self._server = server
        # shutdown() waits for serve_forever's next poll: the default 0.5 s was up to half a
        # second at the end of every probe and thumbnail (0.87 s of a warm 8 MB ingest, measured).
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": RELAY_POLL_S},
            name="reelflow-relay",
            daemon=True,
        )
        self._thread.start()
        self.url = f"http://127.0.0.1:{server.server_address[1]}{self._path}"
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self.error is not None and (exc is None or isinstance(exc, ReelflowError)):
            raise self.error from exc
