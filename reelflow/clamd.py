"""The ClamAV daemon edge: clamd's INSTREAM, PING and VERSION over a unix or TCP socket.

Owns: parsing ``REELFLOW_CLAMD_URL``, framing a byte stream as INSTREAM chunks, reading clamd's
NUL-terminated replies, and mapping replies and socket failures to reelflow's typed errors.
Memory is constant: the caller hands over blocks one at a time and each is on the wire before
the next one is asked for.

Must not: read from the store, decide what is scanned or what a hit means (the scan task does),
or retry (the task's decorator does).

The protocol (clamd(8); ``z`` commands end in NUL and so do their replies)::

    -> zINSTREAM\\0 <len:u32 big-endian><len bytes> ... <0:u32>
    <- stream: OK\\0
     | stream: <Signature> FOUND\\0
     | INSTREAM size limit exceeded. ERROR\\0      (past StreamMaxLength; clamd then hangs up)
     | <message> ERROR\\0
    -> zPING\\0      <- PONG\\0
    -> zVERSION\\0   <- ClamAV 1.4.6/<db version>/<db date>\\0
"""

from __future__ import annotations

import select
import socket
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit

from reelflow.errors import ConfigurationError, ScanLimitExceededError, ScannerUnavailableError

# A frame is sent whole before the next one is read from the caller; 1 MiB keeps syscalls few
# and memory flat (clamd itself reads the stream in pieces of its own size).
FRAME_BYTES = 1024 * 1024
# ClamAV cannot scan an input of 2 GiB or more, whatever MaxFileSize says (libclamav clamps it
# to 2 GiB - 3 and skips larger files, answering OK unless AlertExceedsMax is on).
CLAMAV_MAX_SCAN_BYTES = 2**31 - 3
MAX_REPLY_BYTES = 64 * 1024
_TERMINATOR = struct.pack(">I", 0)
_SIZE_LIMIT_REPLY = "INSTREAM size limit exceeded"
# With AlertExceedsMax yes, a scan that stopped at a limit is reported as this "signature".
_LIMIT_SIGNATURE_PREFIX = "Heuristics.Limits.Exceeded"


@dataclass(frozen=True)
class ClamdEndpoint:
    """Where clamd listens: ``("unix", "/run/clamav/clamd.ctl")`` or ``("tcp", ("h", 3310))``."""

    family: str
    path: str = ""
    host: str = ""
    port: int = 0

    def describe(self) -> str:
        return f"unix://{self.path}" if self.family == "unix" else f"tcp://{self.host}:{self.port}"


@dataclass(frozen=True)
class ScanResult:
    """clamd's verdict on one stream: ``signature`` is None when it found nothing."""

    signature: str | None
    bytes_scanned: int


def parse_clamd_url(url: str) -> ClamdEndpoint:
    """``unix:///abs/path`` or ``tcp://host:port``; anything else is a configuration error."""
    parts = urlsplit(url.strip())
    if parts.scheme == "unix":
        path = (parts.netloc + parts.path) if parts.netloc else parts.path
        if not path.startswith("/") or "\x00" in path:
            raise ConfigurationError(
                f"REELFLOW_CLAMD_URL {url!r}: a unix socket needs an absolute path "
                "(unix:///run/clamav/clamd.ctl)"
            )
        return ClamdEndpoint("unix", path=path)
    if parts.scheme == "tcp":
        try:
            port = parts.port
        except ValueError:
            port = None
        if not parts.hostname or port is None or parts.path not in ("", "/"):
            raise ConfigurationError(
                f"REELFLOW_CLAMD_URL {url!r}: a TCP address needs a host and a port "
                "(tcp://127.0.0.1:3310)"
            )
        return ClamdEndpoint("tcp", host=parts.hostname, port=port)
    raise ConfigurationError(
        f"REELFLOW_CLAMD_URL {url!r}: use unix:///path/to/clamd.ctl or tcp://host:port"
    )


def frames(
    block: bytes | bytearray | memoryview, frame_bytes: int = FRAME_BYTES
) -> Iterator[bytes | memoryview]:
    """INSTREAM frames for one block: a 4-byte big-endian length, then that many bytes (views,
    not copies). An empty block yields nothing: a zero length would end the stream."""
    view = memoryview(block)
    for start in range(0, len(view), frame_bytes):
        piece = view[start : start + frame_bytes]
        yield struct.pack(">I", len(piece))
        yield piece


def parse_scan_reply(reply: bytes) -> str | None:
    """The signature clamd found, or None for a clean stream; limits and errors raise.

    ``INSTREAM size limit exceeded`` and ``Heuristics.Limits.Exceeded.*`` mean clamd did not see
    (or did not scan) the whole object, so there is no verdict: :class:`ScanLimitExceededError`.
    Any other ``... ERROR`` or an unparseable reply: :class:`ScannerUnavailableError` (retryable).
    """
    text = reply.rstrip(b"\x00\n").decode("utf-8", "replace").strip()
    if text.startswith(_SIZE_LIMIT_REPLY):
        raise ScanLimitExceededError(
            "clamd stopped reading the stream at its StreamMaxLength: raise StreamMaxLength in "
            "clamd.conf to at least the largest accepted source (4096M)",
            limit="StreamMaxLength",
        )
    if text.endswith(" ERROR"):
        raise ScannerUnavailableError(f"clamd answered an error: {text[: -len(' ERROR')]}")
    body = text.split(":", 1)[1].strip() if text.startswith("stream:") else None
    if body == "OK":
        return None
    if body is not None and body.endswith(" FOUND") and len(body) > len(" FOUND"):
        signature = body[: -len(" FOUND")].strip()
        if signature.startswith(_LIMIT_SIGNATURE_PREFIX):
            limit = signature[len(_LIMIT_SIGNATURE_PREFIX) :].strip(".") or "a scan limit"
            raise ScanLimitExceededError(
                f"clamd did not scan the whole object ({signature}): raise {limit} in "
                "clamd.conf (or the object is larger than ClamAV can scan)",
                limit=limit,
            )
        return signature
    raise ScannerUnavailableError(
        f"clamd sent a reply reelflow does not understand: {text[:200]!r}"
    )


def check_scannable(size_bytes: int) -> None:
    """Fail closed on what ClamAV cannot scan: it would answer OK without looking."""
    if size_bytes > CLAMAV_MAX_SCAN_BYTES:
        raise ScanLimitExceededError(
            f"the object is {size_bytes} bytes; ClamAV cannot scan more than "
            f"{CLAMAV_MAX_SCAN_BYTES} bytes (2 GiB) in one piece, so it cannot be accepted "
            "while scanning is on",
            limit="ClamAV 2 GiB ceiling",
        )


class ClamdClient:
    """One connection per command, as clamd expects for ``z`` commands without IDSESSION."""

    def __init__(self, url: str, *, timeout_s: float) -> None:
        self.endpoint = parse_clamd_url(url)
        self.timeout_s = timeout_s

    def ping(self) -> None:
        """Raises :class:`ScannerUnavailableError` unless clamd answers PONG."""
        reply = self._command(b"zPING\x00").decode("utf-8", "replace").strip("\x00\n ")
        if reply != "PONG":
            raise ScannerUnavailableError(f"clamd answered PING with {reply[:200]!r}")

    def version(self) -> str:
        """``ClamAV 1.4.6/<signature db version>/<db date>``."""
        return self._command(b"zVERSION\x00").decode("utf-8", "replace").strip("\x00\n ")

    def scan(self, blocks: Iterable[bytes | bytearray | memoryview]) -> ScanResult:
        """Stream ``blocks`` through INSTREAM and return clamd's verdict."""
        sent = 0
        with self._connect() as sock:
            try:
                sock.sendall(b"zINSTREAM\x00")
                for block in blocks:
                    for piece in frames(block):
                        sock.sendall(piece)
                    sent += len(block)
                    # clamd answers and hangs up as soon as the stream passes StreamMaxLength;
                    # over TCP, writing on would turn that reply into a reset, so look first.
                    if _readable(sock):
                        return ScanResult(parse_scan_reply(self._read_reply(sock)), sent)
                sock.sendall(_TERMINATOR)
            except OSError as exc:
                reply = self._reply_after_failure(sock)
                if reply:
                    return ScanResult(parse_scan_reply(reply), sent)
                raise self._unavailable("dropped the stream", exc) from exc
            return ScanResult(parse_scan_reply(self._read_reply(sock)), sent)

    def _command(self, command: bytes) -> bytes:
        with self._connect() as sock:
            try:
                sock.sendall(command)
                return self._read_reply(sock)
            except OSError as exc:
                raise self._unavailable("failed", exc) from exc

    def _connect(self) -> socket.socket:
        ep = self.endpoint
        try:
            if ep.family == "unix":
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    sock.settimeout(self.timeout_s)
                    sock.connect(ep.path)
                except BaseException:
                    sock.close()
                    raise
                return sock
            return socket.create_connection((ep.host, ep.port), timeout=self.timeout_s)
        except OSError as exc:
            raise self._unavailable("is unreachable", exc) from exc

    def _read_reply(self, sock: socket.socket) -> bytes:
        """Up to the NUL that ends a ``z`` reply (or the peer closing), at most 64 KiB."""
        buf = bytearray()
        while b"\x00" not in buf:
            try:
                data = sock.recv(4096)
            except OSError as exc:
                raise self._unavailable("did not answer", exc) from exc
            if not data:
                break
            buf += data
            if len(buf) > MAX_REPLY_BYTES:
                raise ScannerUnavailableError(
                    f"clamd at {self.endpoint.describe()} sent an endless reply"
                )
        if not buf:
            raise ScannerUnavailableError(
                f"clamd at {self.endpoint.describe()} hung up without a reply"
            )
        return bytes(buf.split(b"\x00", 1)[0])

    def _reply_after_failure(self, sock: socket.socket) -> bytes | None:
        """A reply clamd sent before it hung up on us (the size limit), if one arrived."""
        try:
            sock.settimeout(min(self.timeout_s, 1.0))
            return self._read_reply(sock)
        except (OSError, ScannerUnavailableError):
            return None

    def _unavailable(self, what: str, exc: BaseException) -> ScannerUnavailableError:
        detail = type(exc).__name__ if isinstance(exc, TimeoutError) else str(exc)
        return ScannerUnavailableError(f"clamd at {self.endpoint.describe()} {what}: {detail}")


def _readable(sock: socket.socket) -> bool:
    ready, _, _ = select.select([sock], [], [], 0)
    return bool(ready)
