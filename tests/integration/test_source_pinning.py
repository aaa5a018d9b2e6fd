"""URL, S3 and file sources against real servers: pinned versions, SSRF refusals, hangs."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import pytest

from reelflow import media, rules
from reelflow.errors import (
    InputRejectedError,
    SourceChangedError,
    SourceRefusedError,
    SourceTimeoutError,
)
from reelflow.planning import plan_chunks
from reelflow.sources import SourceReader
from tests.support.range_server import Obj, RangeServer, range_server


@pytest.fixture
def srv() -> Any:
    with range_server() as s:
        yield s


def reader(srv: RangeServer | None = None, **kw: Any) -> SourceReader:
    hosts = srv.hostport if srv is not None else ""
    return SourceReader(lambda: None, allowed_hosts=hosts, read_deadline_s=600, **kw)


def read_all(r: SourceReader, ref: Any) -> bytes:
    return b"".join(
        bytes(d) for _, d in r.iter_chunks(ref, plan_chunks(ref.size_bytes, 5 << 20).chunks)
    )


def test_http_source_changed_after_resolve_is_typed(srv: RangeServer, clips: Any) -> None:
    """A new ETag between resolve and the upload read: If-Match gets 412 → SourceChangedError."""
    body = clips.valid().read_bytes()
    srv.objects["/clip.mp4"] = Obj(body)
    r = reader(srv)
    ref = r.resolve(f"{srv.base}/clip.mp4")
    assert read_all(r, ref) == body
    srv.objects["/clip.mp4"] = Obj(body[::-1], etag='"v2"')
    with pytest.raises(SourceChangedError) as err:
        read_all(r, ref)
    assert err.value.reason == "source_changed" and not err.value.retryable
    assert srv.requests[-1][1].get("If-Match") == '"v1"'


def test_http_source_pinned_by_last_modified(srv: RangeServer, clips: Any) -> None:
    """No ETag: Last-Modified goes back as If-Unmodified-Since and If-Range on every read."""
    lm = "Wed, 01 Jan 2025 00:00:00 GMT"
    srv.objects["/c.mp4"] = Obj(clips.valid().read_bytes(), etag=None, last_modified=lm)
    r = reader(srv)
    ref = r.resolve(f"{srv.base}/c.mp4")
    r.read_head(ref)
    sent = srv.requests[-1][1]
    assert sent.get("If-Unmodified-Since") == lm and sent.get("If-Range") == lm
    srv.objects["/c.mp4"].last_modified = "Thu, 02 Jan 2025 00:00:00 GMT"
    with pytest.raises(SourceChangedError):
        r.read_head(ref)


@pytest.mark.parametrize(
    "obj,reason",
    [
        (Obj(b"x" * 100, etag=None), "unpinnable_source"),
        (Obj(b"x" * 100, etag='W/"weak"'), "unpinnable_source"),
        (Obj(b"x" * 100, ranges=False), "no_ranges"),
    ],
)
def test_http_sources_that_cannot_be_pinned_are_refused(
    srv: RangeServer, obj: Obj, reason: str
) -> None:
    """No strong ETag and no Last-Modified, or no range support: refused at resolve."""
    srv.objects["/v.mp4"] = obj
    with pytest.raises(InputRejectedError) as err:
        reader(srv).resolve(f"{srv.base}/v.mp4")
    assert err.value.reason == reason


def test_credentials_stay_out_of_public_uri_fingerprint_and_repr(srv: RangeServer) -> None:
    """userinfo and query values reach the server but not public_uri, name, fingerprint, repr."""
    srv.objects["/clip.mp4"] = Obj(b"\0\0\0\x18ftypisom" + b"\0" * 100)
    url = f"http://user:hunter2@{srv.hostport}/clip.mp4?token=sekrit123&v=1"
    r = reader(srv)
    ref = r.resolve(url)
    r.read_head(ref)
    assert ref.public_uri == f"{srv.base}/clip.mp4?token=REDACTED&v=REDACTED"
    for shown in (ref.public_uri, ref.fingerprint, ref.name, repr(ref)):
        assert "hunter2" not in shown and "sekrit123" not in shown
    assert srv.requests[-1][1]["Authorization"].startswith("Basic ")
    assert "sekrit123" in srv.requests[-1][0]


def test_redirects_are_followed_at_most_five_times(srv: RangeServer) -> None:
    """Five hops on an allowed host are followed; a sixth is refused."""
    srv.objects["/end.mp4"] = Obj(b"\0\0\0\x18ftypisom" + b"\0" * 100)
    for i in range(1, 6):
        srv.redirects[f"/r{i}"] = f"/r{i + 1}"
    srv.redirects["/r6"] = "/end.mp4"
    assert reader(srv).resolve(f"{srv.base}/r2").size_bytes == 112  # r2 … r6 → end: 5 hops
    with pytest.raises(SourceRefusedError) as err:
        reader(srv).resolve(f"{srv.base}/r1")  # 6 hops
    assert err.value.reason == "too_many_redirects"


def test_redirect_to_a_loopback_port_not_allowed_is_refused(srv: RangeServer) -> None:
    """A 302 to 127.0.0.1 on a port that is not allowlisted is refused; it gets no request."""
    with range_server() as internal:
        internal.objects["/latest/meta-data/iam"] = Obj(b"secret")
        srv.redirects["/redirect"] = f"{internal.base}/latest/meta-data/iam"
        with pytest.raises(SourceRefusedError) as err:
            reader(srv).resolve(f"{srv.base}/redirect")
        assert err.value.reason == "address_refused"
        assert internal.requests == []


@pytest.mark.parametrize("address", ["169.254.169.254", "10.0.0.1", "fd00::1", "::ffff:10.0.0.1"])
def test_names_resolving_to_internal_addresses_are_refused_without_connecting(
    address: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stub resolver maps a public-looking name to an internal address: refused, no connect."""
    import socket

    asked: list[str] = []

    def stub(host: str, port: int) -> list[str]:
        asked.append(host)
        return [address]

    def no_connect(*a: Any, **k: Any) -> None:
        raise AssertionError("a refused address must never be connected to")

    monkeypatch.setattr(socket.socket, "connect", no_connect)
    with pytest.raises(SourceRefusedError) as err:
        reader(resolver=stub).resolve("http://media.example.com/clip.mp4")
    assert err.value.reason == "address_refused" and asked == ["media.example.com"]


@pytest.mark.parametrize(
    "source",
    ["file:///etc/passwd", "file:/etc/passwd", "ftp://127.0.0.1/x.mp4", "gopher://h/x", "data://x"],
)
def test_non_http_schemes_are_refused(source: str) -> None:
    """Only local paths, s3:// and http(s):// are sources; file: URLs and others are refused."""
    with pytest.raises(SourceRefusedError) as err:
        reader().resolve(source)
    assert err.value.reason == "scheme_refused"


def test_loopback_url_is_refused_unless_allowlisted(srv: RangeServer) -> None:
    """127.0.0.1 is refused by default; the same URL works once host:port is listed."""
    srv.objects["/a.mp4"] = Obj(b"\0\0\0\x18ftypisom" + b"\0" * 10)
    with pytest.raises(SourceRefusedError):
        reader().resolve(f"{srv.base}/a.mp4")
    assert srv.requests == []
    assert reader(srv).resolve(f"{srv.base}/a.mp4").size_bytes == 22


def test_ffprobe_gets_the_pinned_bytes_never_the_lavf_playlist(
    srv: RangeServer, clips: Any
) -> None:
    """ffprobe reads through the relay: the source never sees a Lavf user agent or playlist."""
    playlist = f"#EXTM3U\n#EXTINF:3,\n{srv.base}/internal/other.mp4\n".encode()
    srv.objects["/v.mp4"] = Obj(clips.valid().read_bytes(), ua_marker="Lavf", ua_body=playlist)
    r = reader(srv)
    ref = r.resolve(f"{srv.base}/v.mp4")
    container = rules.sniff_container(r.read_head(ref))
    with r.open_media(ref, container) as inp:
        assert inp.url.startswith("http://127.0.0.1:") and srv.base not in inp.url
        probed = media.probe(inp)
    assert rules.interpret_probe(probed, container=container, max_duration_s=60).width == 720
    assert not any("Lavf" in h.get("User-Agent", "") for _, h in srv.requests)
    assert "/internal/other.mp4" not in srv.paths_requested()


def test_a_change_seen_by_ffprobe_reads_surfaces_as_source_changed(
    srv: RangeServer, clips: Any
) -> None:
    """The relay's pinned read fails mid-probe: the typed error, not ffprobe's, reaches us."""
    srv.objects["/v.mp4"] = Obj(clips.valid().read_bytes())
    r = reader(srv)
    ref = r.resolve(f"{srv.base}/v.mp4")
    srv.objects["/v.mp4"].etag = '"v2"'
    with pytest.raises(SourceChangedError), r.open_media(ref, "mp4") as inp:
        media.probe(inp)


def test_s3_source_overwritten_after_resolve_is_typed(
    s3_server: Any, bucket: str, clips: Any
) -> None:
    """An object overwritten after resolve: the IfMatch GET fails with SourceChangedError."""
    client = s3_server.client()
    client.upload_file(str(clips.valid()), bucket, "in/clip.mp4")
    r = SourceReader(lambda: client, allowed_hosts="", read_deadline_s=600)
    ref = r.resolve(f"s3://{bucket}/in/clip.mp4")
    assert r.read_head(ref)[4:8] == b"ftyp"
    client.put_object(Bucket=bucket, Key="in/clip.mp4", Body=b"#EXTM3U\nfile:///etc/passwd\n")
    with pytest.raises(SourceChangedError):
        r.read_head(ref)
    with pytest.raises(SourceChangedError):
        read_all(r, ref)


def test_versioned_s3_source_reads_the_pinned_version(
    s3_server: Any, bucket: str, clips: Any
) -> None:
    """In a versioned bucket every GET names the resolved VersionId: an overwrite cannot reach us."""
    client = s3_server.client()
    client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    body = clips.valid().read_bytes()
    client.put_object(Bucket=bucket, Key="v.mp4", Body=body)
    r = SourceReader(lambda: client, allowed_hosts="", read_deadline_s=600)
    ref = r.resolve(f"s3://{bucket}/v.mp4")
    assert ref.version_id
    client.put_object(Bucket=bucket, Key="v.mp4", Body=b"other")
    assert read_all(r, ref) == body


def test_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    """A FIFO (no writer) is refused at once, not waited on in open()."""
    fifo = tmp_path / "clip.mp4"
    os.mkfifo(fifo)
    errors: list[BaseException] = []
    t = threading.Thread(target=lambda: _capture(errors, reader().resolve, str(fifo)), daemon=True)
    t.start()
    t.join(timeout=20)
    if t.is_alive():  # unblock the stuck open() so the test process can end
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("resolve blocked on a FIFO")
    assert isinstance(errors[0], InputRejectedError) and errors[0].reason == "not_regular_file"


def _capture(errors: list[BaseException], fn: Any, *args: Any) -> None:
    try:
        fn(*args)
    except BaseException as exc:  # noqa: BLE001 - handed back to the test thread
        errors.append(exc)


def test_socket_and_device_are_refused(tmp_path: Path) -> None:
    """A unix socket and /dev/zero are not regular files: refused with the same reason."""
    import socket

    path = tmp_path / "s.mp4"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(path))
        for source in (str(path), "/dev/zero"):
            with pytest.raises(InputRejectedError) as err:
                reader().resolve(source)
            assert err.value.reason == "not_regular_file"


def test_nul_in_a_path_is_refused() -> None:
    """A NUL byte in the source is a validation error, not an OS error."""
    with pytest.raises(InputRejectedError) as err:
        reader().resolve("/tmp/clip\x00.mp4")
    assert err.value.reason == "bad_path"


def test_local_file_replaced_after_resolve_is_typed(tmp_path: Path, clips: Any) -> None:
    """The path now names another file (new inode): the pinned open refuses it."""
    clip = tmp_path / "c.mp4"
    clip.write_bytes(clips.valid().read_bytes())
    r = reader()
    ref = r.resolve(str(clip))
    other = tmp_path / "other.mp4"
    other.write_bytes(b"\0" * ref.size_bytes)
    os.replace(other, clip)
    with pytest.raises(SourceChangedError):
        read_all(r, ref)


def test_read_deadline_bounds_a_slow_source(srv: RangeServer, clips: Any) -> None:
    """Each read "takes" 40 s on a fake clock; past a 100 s total budget: SourceTimeoutError."""
    srv.objects["/v.mp4"] = Obj(clips.valid().read_bytes())
    now = [0.0]

    def clock() -> float:
        now[0] += 20.0  # two clock reads per block: 40 s charged per block
        return now[0]

    r = SourceReader(lambda: None, allowed_hosts=srv.hostport, read_deadline_s=100, clock=clock)
    ref = r.resolve(f"{srv.base}/v.mp4")
    with pytest.raises(SourceTimeoutError) as err:
        for _ in range(10):
            r.read_head(ref)
    assert err.value.reason == "source_deadline" and not err.value.retryable
