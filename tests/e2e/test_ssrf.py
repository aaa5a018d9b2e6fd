"""`reelflow ingest` against hostile sources: the bytes stored are the bytes validated, no SSRF,
and each bad input a one-line typed reason, exit 2, nothing stored (issue 8 §1, §2, §6, §8)."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from reelflow.cli import app
from tests.support import refusals
from tests.support.range_server import Obj, RangeServer, range_server

pytestmark = pytest.mark.usefixtures("prefect_api")

SRC = ["-f", "lavfi", "-i", "testsrc2=size=720x1280:rate=30"]


def _ffmpeg(out: Path, *args: str) -> Path:
    if not out.exists():
        subprocess.run(["ffmpeg", "-v", "error", "-y", *args, str(out)], check=True, timeout=120)
    return out


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory, clips: Any) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("hostile")
    h264 = ["-t", "1", "-c:v", "libx264", "-pix_fmt", "yuv420p"]
    return {
        # An honest .mkv is stored now (tests/e2e/test_formats.py); one that calls itself WebM
        # while holding H.264 is refused, and named as the Matroska file it is.
        "mkv_labelled_webm": clips.mkv_labelled_webm(),
        "mpegts": _ffmpeg(d / "clip.ts", *SRC, *h264, "-f", "mpegts"),
        "zero_duration": _ffmpeg(
            d / "zero.mp4",
            *SRC,
            "-frames:v",
            "0",
            "-c:v",
            "libx264",
            "-movflags",
            "frag_keyframe+empty_moov",
        ),
    }


def run_cli(*args: str) -> Any:
    return CliRunner().invoke(app, ["ingest", *args, "--json"])


@pytest.fixture(autouse=True)
def _no_retry_spent(prefect_api: str) -> Any:
    """Every case here is a refusal: none may spend a task retry."""
    since = refusals.now()
    yield
    refusals.assert_no_retry_spent(prefect_api, since)


def assert_refused(result: Any, home: Path, reason: str) -> str:
    return refusals.assert_refused(result, home, reason)


@pytest.fixture
def srv(monkeypatch: pytest.MonkeyPatch) -> Any:
    with range_server() as s:
        monkeypatch.setenv("REELFLOW_SOURCE_ALLOWED_HOSTS", s.hostport)
        yield s


def test_swapped_upload_read_is_caught_before_thumbnail_and_store(
    home: Path, srv: RangeServer, clips: Any, tmp_path: Path
) -> None:
    """Validation reads get a real MP4, the upload read an HLS playlist (same ETag, same size):
    exit 2 source_changed, nothing stored, the playlist's targets never opened."""
    from reelflow.settings import Settings
    from storage.runtime import Runtime
    from tasks.validate import validate_source

    body = clips.valid().read_bytes()
    private = tmp_path / "private" / "other.mp4"
    private.parent.mkdir()
    private.write_bytes(body)
    playlist = (
        f"#EXTM3U\n#EXT-X-TARGETDURATION:3\n#EXTINF:3,\nfile://{private}\n"
        f"#EXTINF:3,\n{srv.base}/private/other.mp4\n#EXT-X-ENDLIST\n"
    ).encode()
    srv.objects["/swap.mp4"] = Obj(
        body, swap_body=playlist.ljust(len(body), b"\n"), swap_from=10**9
    )
    validate_source(f"{srv.base}/swap.mp4", Runtime.from_settings(Settings()))
    obj = srv.objects["/swap.mp4"]
    obj.swap_from, obj.full_gets = obj.full_gets + 1, 0  # validation's reads stay honest
    before = private.stat().st_atime_ns

    line = assert_refused(run_cli(f"{srv.base}/swap.mp4"), home, "source_changed")
    assert "not the video that was validated" in line
    assert obj.full_gets == obj.swap_from  # the lie was told to the upload read
    assert "/private/other.mp4" not in srv.paths_requested()
    assert private.stat().st_atime_ns == before


def test_redirect_to_an_internal_port_is_refused(home: Path, srv: RangeServer) -> None:
    """A 302 to 127.0.0.1:<port not allowlisted>/latest/meta-data: exit 2, no request there."""
    with range_server() as internal:
        internal.objects["/latest/meta-data/iam"] = Obj(b"role-credentials")
        srv.redirects["/redirect"] = f"{internal.base}/latest/meta-data/iam"
        assert_refused(run_cli(f"{srv.base}/redirect"), home, "address_refused")
        assert internal.requests == []


def test_lavf_only_playlist_is_never_reached(home: Path, srv: RangeServer, clips: Any) -> None:
    """A source serving a playlist to the Lavf user agent only: the MP4 is stored, no Lavf
    request ever reached it and the playlist's internal target was never fetched."""
    body = clips.valid().read_bytes()
    playlist = f"#EXTM3U\n#EXTINF:3,\n{srv.base}/internal/x.mp4\n#EXT-X-ENDLIST\n".encode()
    srv.objects["/v.mp4"] = Obj(body, ua_marker="Lavf", ua_body=playlist)
    result = run_cli(f"{srv.base}/v.mp4")
    assert result.exit_code == 0, result.output
    assert hashlib.sha256(body).hexdigest() in result.stdout
    assert not any("Lavf" in h.get("User-Agent", "") for _, h in srv.requests)
    assert "/internal/x.mp4" not in srv.paths_requested()


@pytest.mark.parametrize(
    "source,reason",
    [
        ("file:///etc/passwd", "scheme_refused"),
        ("ftp://127.0.0.1/clip.mp4", "scheme_refused"),
        ("gopher://127.0.0.1:70/_x", "scheme_refused"),
        ("http://127.0.0.1:9/clip.mp4", "address_refused"),
        ("http://[::ffff:127.0.0.1]:9/clip.mp4", "address_refused"),
    ],
)
def test_non_http_and_internal_urls_are_refused(home: Path, source: str, reason: str) -> None:
    """Other schemes and loopback addresses not allowlisted: exit 2 before any request."""
    assert_refused(run_cli(source), home, reason)


@pytest.mark.parametrize(
    "kind,reason,says",
    [
        ("mkv_labelled_webm", "container", "video/x-matroska"),
        ("mpegts", "container", "video/mp2t"),
        ("playlist", "playlist", "playlist"),
        ("zero_duration", "duration", "duration"),
        ("fifo", "not_regular_file", "FIFO"),
    ],
)
def test_hostile_files_are_refused(
    home: Path, hostile: dict[str, Path], tmp_path: Path, kind: str, reason: str, says: str
) -> None:
    """H.264 in Matroska claiming to be WebM (named video/x-matroska, never WebM), MPEG-TS, a playlist named .mp4, a zero-duration
    stream and a FIFO: each a one-line typed reason, exit 2, nothing stored."""
    if kind == "playlist":
        path = tmp_path / "renamed.mp4"
        path.write_text("#EXTM3U\n#EXTINF:3,\nfile:///etc/passwd\n#EXT-X-ENDLIST\n")
    elif kind == "fifo":
        path = tmp_path / "pipe.mp4"
        os.mkfifo(path)
    else:
        path = hostile[kind]
    line = assert_refused(run_cli(str(path)), home, reason)
    assert says in line and "video/webm" not in line
