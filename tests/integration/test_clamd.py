"""reelflow's clamd client and scan task against the real daemon (Debian clamav-daemon).

The daemon runs with the tests' own signature database (tests/support/clamd.py): MARKER is the
"virus", reported as SIGNATURE.
"""

from __future__ import annotations

import hashlib
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reelflow.clamd import FRAME_BYTES, ClamdClient
from reelflow.errors import (
    InfectedError,
    IntegrityCheckError,
    ScanLimitExceededError,
    ScannerUnavailableError,
    is_retryable,
)
from reelflow.rules import VideoMeta
from reelflow.settings import Settings
from storage.runtime import Runtime
from tasks.scan import ScanReport, scan_video
from tests.support.clamd import MARKER, SIGNATURE, ClamdDaemon

META = VideoMeta("mp4", "video/mp4", 1.0, 360, 640, 30.0, "h264", None, False, None)


@pytest.fixture(params=["unix", "tcp"])
def client(request: pytest.FixtureRequest, clamd: ClamdDaemon) -> ClamdClient:
    url = clamd.url if request.param == "unix" else clamd.tcp_url
    return ClamdClient(url, timeout_s=30)


@pytest.fixture(scope="module")
def small_clamd() -> Iterator[ClamdDaemon]:
    """A second daemon whose StreamMaxLength (1 MiB) is below what we send."""
    with ClamdDaemon(stream_max_length="1M") as daemon:
        yield daemon


def test_ping_and_version(client: ClamdClient) -> None:
    """PING answers PONG and VERSION names the engine, on the unix socket and over TCP."""
    client.ping()
    assert client.version().startswith("ClamAV ")


def test_clean_stream(client: ClamdClient) -> None:
    """Bytes without the marker are clean and all of them were sent."""
    blocks = [b"\x00" * 100_000, bytes(range(256)) * 4000]
    result = client.scan(blocks)
    assert result.signature is None
    assert result.bytes_scanned == sum(map(len, blocks))


def test_marker_across_frame_and_block_boundaries(client: ClamdClient) -> None:
    """The marker is found even when it straddles a frame and a block boundary."""
    half = len(MARKER) // 2
    first = b"a" * (FRAME_BYTES - half) + MARKER[:half]
    second = MARKER[half:] + b"b" * 1000
    assert client.scan([first, second]).signature == SIGNATURE


def test_empty_stream_is_clean(client: ClamdClient) -> None:
    """A stream with no bytes at all is answered (clean), not left hanging."""
    assert client.scan([]).signature is None


@pytest.mark.parametrize("family", ["unix", "tcp"])
def test_over_stream_max_length_is_terminal(small_clamd: ClamdDaemon, family: str) -> None:
    """Past StreamMaxLength clamd refuses: a non-retryable error that says to raise it."""
    url = small_clamd.url if family == "unix" else small_clamd.tcp_url
    c = ClamdClient(url, timeout_s=30)
    assert c.scan([b"x" * (1024 * 1024)]).signature is None  # exactly at the limit is fine
    with pytest.raises(ScanLimitExceededError) as info:
        c.scan([b"x" * (256 * 1024)] * 40)  # 10 MiB, well past it
    assert "StreamMaxLength" in str(info.value) and not is_retryable(info.value)


def test_unreachable_unix_socket(tmp_path: Path) -> None:
    """A socket path nobody listens on is a retryable 'scanner unavailable'."""
    c = ClamdClient(f"unix://{tmp_path / 'nobody.sock'}", timeout_s=5)
    with pytest.raises(ScannerUnavailableError) as info:
        c.scan([b"data"])
    assert is_retryable(info.value) and "unreachable" in str(info.value)


def test_unreachable_tcp_port() -> None:
    """A loopback port with no listener is a retryable 'scanner unavailable'."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: connections are refused
        with pytest.raises(ScannerUnavailableError):
            ClamdClient(f"tcp://127.0.0.1:{port}", timeout_s=5).ping()


def _one_shot_server(tmp_path: Path, behaviour: str) -> tuple[str, threading.Thread]:
    """A unix socket peer that does what clamd never does: hang up silently, or never answer."""
    path = str(tmp_path / f"{behaviour}.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(1)

    def serve() -> None:
        conn, _ = srv.accept()
        with conn, srv:
            conn.settimeout(10)
            if behaviour == "silent":
                try:
                    while conn.recv(65536):
                        pass
                except OSError:
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return f"unix://{path}", thread


@pytest.mark.parametrize("behaviour", ["hangup", "silent"])
def test_peer_without_reply_is_retryable(tmp_path: Path, behaviour: str) -> None:
    """A peer that hangs up or never answers (within the timeout) is retryable, not a verdict."""
    url, thread = _one_shot_server(tmp_path, behaviour)
    with pytest.raises(ScannerUnavailableError):
        ClamdClient(url, timeout_s=1).scan([b"x" * 1000])
    thread.join(timeout=15)


# --- the scan task over both stores: it scans what the store holds ---------------------------


@pytest.fixture(params=["local", "s3"])
def runtime(request: pytest.FixtureRequest, tmp_path: Path, clamd: ClamdDaemon) -> Runtime:
    kwargs: dict[str, Any] = {"home": tmp_path / "home", "clamd_url": clamd.url}
    if request.param == "s3":
        server = request.getfixturevalue("s3_server")
        bucket = request.getfixturevalue("bucket")
        kwargs |= {"store_url": f"s3://{bucket}/media", "s3_endpoint_url": server.endpoint_url}
    return Runtime.from_settings(Settings(**kwargs))


def _stage(rt: Runtime, data: bytes) -> tuple[str, str]:
    key = "staging/test/video.mp4"
    rt.store.put_bytes(key, data, "video/mp4")
    return key, hashlib.sha256(data).hexdigest()


def test_scan_task_clean(runtime: Runtime) -> None:
    """A clean staged object (several read blocks) scans clean with the engine named."""
    data = b"\x01" * (9 * 1024 * 1024)  # more than one SCAN_BLOCK_BYTES read
    key, sha = _stage(runtime, data)
    report = scan_video.fn(key, sha, META, runtime)
    assert report == ScanReport("clean", report.engine, len(data))
    assert report.engine and report.engine.startswith("ClamAV")


def test_scan_task_infected(runtime: Runtime) -> None:
    """The marker in the stored object is InfectedError, with the signature in the message."""
    data = b"\x02" * 5000 + MARKER + b"\x03" * 5000
    key, sha = _stage(runtime, data)
    with pytest.raises(InfectedError) as info:
        scan_video.fn(key, sha, META, runtime)
    assert info.value.signature == SIGNATURE and SIGNATURE in str(info.value)
    assert not info.value.retryable


def test_scan_task_checks_the_bytes_it_scanned(runtime: Runtime) -> None:
    """Scanned bytes that do not hash to the verified SHA-256 are an integrity error."""
    key, _ = _stage(runtime, b"clean bytes")
    with pytest.raises(IntegrityCheckError):
        scan_video.fn(key, "0" * 64, META, runtime)


def test_scan_task_off_without_url(tmp_path: Path) -> None:
    """No REELFLOW_CLAMD_URL: the task reports 'off' and reads nothing."""
    rt = Runtime.from_settings(Settings(home=tmp_path / "home", clamd_url=None))
    assert scan_video.fn("staging/missing.mp4", "0" * 64, META, rt).verdict == "off"
