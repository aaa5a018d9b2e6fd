"""The test support itself: S3 operation counts, fault rules, and the generated clips."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any
from unittest.mock import ANY

import pytest
from botocore.config import Config
from botocore.exceptions import ClientError, ConnectionClosedError

from reelflow.samples import MIB, make_clip, make_large_clip
from tests.support.clips import (
    BAD_KINDS,
    ELEVEN_MINUTES_S,
    ClipCache,
    probe,
    top_level_boxes,
)
from tests.support.s3server import S3Control, S3TestServer, classify

REPO = Path(__file__).resolve().parents[2]
NO_RETRIES = Config(retries={"total_max_attempts": 1})
PART = b"p" * (5 * MIB)


@pytest.fixture
def s3(s3_server: S3TestServer) -> Iterator[S3TestServer]:
    """The session server with zeroed counts, and no fault rule left behind for the next test."""
    s3_server.reset_stats()
    s3_server.set_faults([])
    yield s3_server
    s3_server.set_faults([])


@pytest.fixture
def upload(s3: S3TestServer, bucket: str) -> dict[str, str]:
    up = s3.client().create_multipart_upload(Bucket=bucket, Key="video.mp4")
    s3.reset_stats()
    return {"Bucket": bucket, "Key": "video.mp4", "UploadId": up["UploadId"]}


@pytest.fixture(scope="module")
def cache(clip_dir: Path) -> ClipCache:
    return ClipCache(clip_dir)


def stream(info: dict[str, Any], kind: str) -> dict[str, Any]:
    return next(s for s in info["streams"] if s["codec_type"] == kind)


def part_numbers(s3: S3TestServer, upload: dict[str, str]) -> list[int]:
    parts = s3.client().list_parts(**upload).get("Parts", [])
    return [p["PartNumber"] for p in parts]


# --- S3 server: operation names and counts ------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "query", "headers", "op"),
    [
        ("PUT", "/b/k", "partNumber=3&uploadId=u", {}, "UploadPart"),
        (
            "PUT",
            "/b/k",
            "partNumber=3&uploadId=u",
            {"HTTP_X_AMZ_COPY_SOURCE": "/b/o"},
            "UploadPartCopy",
        ),
        ("POST", "/b/k", "uploads", {}, "CreateMultipartUpload"),
        ("POST", "/b/k", "uploadId=u", {}, "CompleteMultipartUpload"),
        ("GET", "/b/k", "uploadId=u&max-parts=2", {}, "ListParts"),
        ("DELETE", "/b/k", "uploadId=u", {}, "AbortMultipartUpload"),
        ("PUT", "/b/a/b/c.mp4", "", {}, "PutObject"),
        ("PUT", "/b/k", "", {"HTTP_X_AMZ_COPY_SOURCE": "/b/o"}, "CopyObject"),
        ("GET", "/b/k", "", {}, "GetObject"),
        ("HEAD", "/b/k", "", {}, "HeadObject"),
        ("DELETE", "/b/k", "", {}, "DeleteObject"),
        ("GET", "/b", "uploads", {}, "ListMultipartUploads"),
        ("GET", "/b", "list-type=2&prefix=x", {}, "ListObjectsV2"),
        ("PUT", "/b", "", {}, "CreateBucket"),
        ("POST", "/b", "delete", {}, "DeleteObjects"),
        ("GET", "/", "", {}, "ListBuckets"),
    ],
)
def test_classify_names_s3_operations(
    method: str, path: str, query: str, headers: dict[str, str], op: str
) -> None:
    """Path-style requests are named after the S3 API operation they invoke."""
    environ = {"REQUEST_METHOD": method, "PATH_INFO": path, "QUERY_STRING": query, **headers}
    assert classify(environ).op == op


def test_counts_every_operation_of_a_multipart_upload(s3: S3TestServer, bucket: str) -> None:
    """Each request boto3 sends is counted once under its operation name."""
    s3.reset_stats()  # forget the bucket fixture's CreateBucket
    c = s3.client()
    up = c.create_multipart_upload(Bucket=bucket, Key="v")["UploadId"]
    etags = [
        c.upload_part(Bucket=bucket, Key="v", UploadId=up, PartNumber=n, Body=body)["ETag"]
        for n, body in ((1, PART), (2, b"tail"))
    ]
    c.list_parts(Bucket=bucket, Key="v", UploadId=up)
    c.complete_multipart_upload(
        Bucket=bucket,
        Key="v",
        UploadId=up,
        MultipartUpload={"Parts": [{"PartNumber": n, "ETag": e} for n, e in enumerate(etags, 1)]},
    )
    c.head_object(Bucket=bucket, Key="v")
    assert c.get_object(Bucket=bucket, Key="v", Range="bytes=0-3")["Body"].read() == b"pppp"
    c.copy_object(Bucket=bucket, Key="v2", CopySource={"Bucket": bucket, "Key": "v"})
    c.put_object(Bucket=bucket, Key="small", Body=b"x")
    gone = c.create_multipart_upload(Bucket=bucket, Key="gone")["UploadId"]
    c.abort_multipart_upload(Bucket=bucket, Key="gone", UploadId=gone)

    assert s3.stats() == {
        "CreateMultipartUpload": 2,
        "UploadPart": 2,
        "ListParts": 1,
        "CompleteMultipartUpload": 1,
        "HeadObject": 1,
        "GetObject": 1,
        "CopyObject": 1,
        "PutObject": 1,
        "AbortMultipartUpload": 1,
    }
    uploads = [r for r in s3.requests() if r.op == "UploadPart"]
    assert [(r.part_number, r.bytes_in, r.status) for r in uploads] == [
        (1, 5 * MIB, 200),
        (2, 4, 200),
    ]


def test_stats_are_readable_over_http_while_another_process_uploads(
    s3: S3TestServer, bucket: str
) -> None:
    """A separate client process's requests show up in GET /_reelflow/stats as they happen."""
    s3.reset_stats()
    script = (
        "import sys\n"
        "from tests.support.s3server import make_client\n"
        f"c = make_client({s3.endpoint_url!r})\n"
        f"for i in range(3): c.put_object(Bucket={bucket!r}, Key=f'k{{i}}', Body=b'x')\n"
        "print('sent', flush=True)\n"
        "sys.stdin.readline()\n"
    )
    env = os.environ | {"PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "sent"
        with urllib.request.urlopen(f"{s3.endpoint_url}/_reelflow/stats", timeout=10) as resp:
            assert json.loads(resp.read()) == {"PutObject": 3}
        assert proc.poll() is None
    finally:
        proc.communicate(input="\n", timeout=30)
    S3Control(s3.endpoint_url).reset_stats()
    assert s3.stats() == {}


# --- S3 server: faults ---------------------------------------------------------------------------


def test_500_is_retried_by_boto3_until_it_succeeds(
    s3: S3TestServer, upload: dict[str, str]
) -> None:
    """Two 500s on part 2 are absorbed by boto3's own retries; the part lands on attempt 3."""
    s3.set_faults([{"op": "UploadPart", "part_numbers": [2], "kind": "500", "times": 2}])
    c = s3.client()
    attempts = [
        c.upload_part(**upload, PartNumber=n, Body=PART)["ResponseMetadata"]["RetryAttempts"]
        for n in (1, 2, 3)
    ]
    assert attempts == [0, 2, 0]
    assert s3.stats() == {"UploadPart": 5}
    assert [r.fault for r in s3.requests()] == [None, "500", "500", None, None]
    assert s3.faults()[0]["fired"] == 2
    assert part_numbers(s3, upload) == [1, 2, 3]


@pytest.mark.parametrize(("kind", "code"), [("500", "InternalError"), ("503", "SlowDown")])
def test_5xx_replies_are_s3_xml_errors(
    s3: S3TestServer, upload: dict[str, str], kind: str, code: str
) -> None:
    """Without retries the client sees S3's own error code and status, and nothing is stored."""
    s3.set_faults([{"op": "UploadPart", "kind": kind}])
    with pytest.raises(ClientError) as info:
        s3.client(config=NO_RETRIES).upload_part(**upload, PartNumber=1, Body=b"x")
    assert info.value.response["Error"]["Code"] == code
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == int(kind)
    assert part_numbers(s3, upload) == []


def test_reset_is_a_connection_error_without_retries(
    s3: S3TestServer, upload: dict[str, str]
) -> None:
    """A reset rule drops the connection: boto3 raises ConnectionClosedError, no part is stored."""
    s3.set_faults([{"op": "UploadPart", "part_numbers": [1], "kind": "reset"}])
    c = s3.client(config=NO_RETRIES)
    with pytest.raises(ConnectionClosedError):
        c.upload_part(**upload, PartNumber=1, Body=PART)
    assert part_numbers(s3, upload) == []
    c.upload_part(**upload, PartNumber=1, Body=PART)
    assert part_numbers(s3, upload) == [1]


def test_reset_sends_a_tcp_rst_after_reading_the_body(s3: S3TestServer) -> None:
    """The peer sees ECONNRESET (not a clean close), and the whole body was received first."""
    s3.set_faults([{"op": "PutObject", "kind": "reset"}])
    with socket.create_connection(("127.0.0.1", s3.port), timeout=10) as sock:
        sock.sendall(b"PUT /bkt/key HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
        with pytest.raises(ConnectionResetError):
            sock.recv(1024)
    [record] = s3.requests()
    assert (record.op, record.bytes_in, record.fault) == ("PutObject", 5, "reset")


def test_reset_after_lets_the_request_take_effect(s3: S3TestServer, upload: dict[str, str]) -> None:
    """reset-after: the client saw no reply, yet the part exists (ListParts is the truth)."""
    s3.set_faults([{"op": "UploadPart", "kind": "reset-after"}])
    with pytest.raises(ConnectionClosedError):
        s3.client(config=NO_RETRIES).upload_part(**upload, PartNumber=4, Body=b"x")
    assert part_numbers(s3, upload) == [4]


def test_rules_fire_per_listed_part_number_then_stop(
    s3: S3TestServer, upload: dict[str, str]
) -> None:
    """part_numbers [2, 5] with times 1: parts 2 and 5 fail once each, everything else passes."""
    s3.set_faults([{"op": "UploadPart", "part_numbers": [2, 5], "kind": "503", "times": 1}])
    c = s3.client(config=NO_RETRIES)
    failed = []
    for n in range(1, 6):
        try:
            c.upload_part(**upload, PartNumber=n, Body=b"x")
        except ClientError:
            failed.append(n)
    assert failed == [2, 5]
    for n in failed:
        c.upload_part(**upload, PartNumber=n, Body=b"x")
    assert part_numbers(s3, upload) == [1, 2, 3, 4, 5]
    assert s3.faults()[0]["fired"] == 2


def test_fault_rules_are_set_and_cleared_over_http(s3: S3TestServer) -> None:
    """POST /_reelflow/faults validates rules, GET shows them, an empty list clears them."""
    remote = S3Control(s3.endpoint_url)
    with pytest.raises(urllib.error.HTTPError) as info:
        remote.set_faults([{"op": "UploadPart", "kind": "teapot"}])
    assert info.value.code == 400
    remote.set_faults([{"op": "GetObject", "kind": "500", "times": 3}])
    assert remote.faults() == [
        {"op": "GetObject", "kind": "500", "part_numbers": None, "times": 3, "fired": 0}
    ]
    remote.set_faults([])
    assert s3.faults() == []


def test_presigned_get_url_is_readable_by_ffprobe(
    s3: S3TestServer, bucket: str, cache: ClipCache
) -> None:
    """ffprobe reads a clip straight from a presigned moto URL (HTTP source ingestion path)."""
    c = s3.client()
    c.upload_file(str(cache.valid_vertical()), bucket, "inbox/clip.mp4")
    url = c.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "inbox/clip.mp4"})
    assert stream(probe(url), "video")["codec_name"] == "h264"
    assert s3.stats()["GetObject"] >= 1


# --- clips -----------------------------------------------------------------------------------------


def test_valid_clip_is_vertical_h264_aac_with_faststart(cache: ClipCache) -> None:
    """720x1280, 30 fps, yuv420p H.264 + AAC, 3 s, moov before mdat."""
    info = probe(cache.valid_vertical())
    v, a = stream(info, "video"), stream(info, "audio")
    assert (v["codec_name"], v["width"], v["height"], v["pix_fmt"]) == (
        "h264",
        720,
        1280,
        "yuv420p",
    )
    assert Fraction(v["avg_frame_rate"]) == 30 and a["codec_name"] == "aac"
    assert float(info["format"]["duration"]) == pytest.approx(3.0, abs=0.05)
    kinds = [kind for kind, _, _ in top_level_boxes(cache.valid_vertical())]
    assert kinds.index("moov") < kinds.index("mdat")


def test_webm_clip_is_vp9_with_opus(cache: ClipCache) -> None:
    """The WebM clip is VP9 + Opus, 720x1280."""
    info = probe(cache.valid_webm_vp9())
    v = stream(info, "video")
    assert (v["codec_name"], v["width"], v["height"]) == ("vp9", 720, 1280)
    assert stream(info, "audio")["codec_name"] == "opus"
    assert "webm" in info["format"]["format_name"]


@pytest.mark.parametrize(
    ("method", "min_bytes", "max_bytes"),
    [("medium", 12 * MIB, 15 * MIB), ("large", 100 * MIB, 115 * MIB)],
)
def test_noise_clips_are_valid_and_just_over_the_size_asked(
    cache: ClipCache, method: str, min_bytes: int, max_bytes: int
) -> None:
    """medium/large: at least min_bytes (12 MiB stays three 5 MiB parts), and publishable."""
    path = getattr(cache, method)(min_bytes)
    assert min_bytes <= path.stat().st_size < max_bytes
    info = probe(path)
    v = stream(info, "video")
    assert (v["codec_name"], v["width"], v["height"], v["pix_fmt"]) == (
        "h264",
        720,
        1280,
        "yuv420p",
    )
    assert v["profile"] != "High 4:4:4 Predictive"  # lossless x264 would need it; decoders balk
    assert Fraction(v["avg_frame_rate"]) == 30 and float(info["format"]["duration"]) >= 1.0
    assert stream(info, "audio")["codec_name"] == "aac"


EXPECTED_BAD = {
    "empty": None,
    "text": None,
    "truncated": None,
    "audio_only": {"video": None, "audio": ("aac", None, None, None)},
    "still_image": {"video": ("png", 720, 1280, ANY)},  # ffprobe invents 25 fps for images
    "one_fps": {"video": ("h264", 720, 1280, 1)},
    "tiny": {"video": ("h264", 200, 200, 30)},
    "huge": {"video": ("h264", 5000, 5000, 24)},
    "too_long": {"video": ("h264", 720, 1280, 30)},
}


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_bad_inputs_are_what_their_names_say(cache: ClipCache, kind: str) -> None:
    """ffprobe agrees with each bad input's description (or, for the broken ones, refuses it)."""
    path = cache.bad(kind)
    assert path.suffix == ".mp4"
    expected = EXPECTED_BAD[kind]
    if expected is None:
        with pytest.raises(subprocess.CalledProcessError):
            probe(path)
        return
    info = probe(path)
    for codec_type, want in expected.items():
        streams = [s for s in info["streams"] if s["codec_type"] == codec_type]
        if want is None:
            assert streams == []
            continue
        s = streams[0]
        fps = Fraction(s["avg_frame_rate"]) if s.get("avg_frame_rate", "0/0") != "0/0" else None
        assert (s["codec_name"], s.get("width"), s.get("height"), fps) == want


def test_broken_files_are_broken_the_way_described(cache: ClipCache) -> None:
    """Empty is 0 bytes, text is text, truncated lost moov, the still image has no duration."""
    assert cache.bad("empty").stat().st_size == 0
    assert cache.bad("text").read_text().startswith("This is not a video")
    truncated = cache.bad("truncated")
    assert truncated.read_bytes()[4:8] == b"ftyp"
    assert "moov" not in [kind for kind, _, _ in top_level_boxes(truncated)]
    still = probe(cache.bad("still_image"))["format"]
    assert still["format_name"] == "png_pipe" and "duration" not in still
    assert float(probe(cache.bad("too_long"))["format"]["duration"]) == pytest.approx(
        12.0, abs=0.05
    )
    assert float(probe(cache.bad("huge"))["format"]["duration"]) == pytest.approx(1.0, abs=0.05)


def test_eleven_minute_clip_keeps_every_frame(cache: ClipCache) -> None:
    """The stream-copied 11-minute clip is 660 s at exactly 30 fps (no frames lost at seams)."""
    info = probe(cache.eleven_minutes())
    v = stream(info, "video")
    assert float(info["format"]["duration"]) == pytest.approx(ELEVEN_MINUTES_S, abs=0.1)
    assert Fraction(v["avg_frame_rate"]) == 30 and int(v["nb_frames"]) == 30 * 660


def test_cache_reuses_files_and_keys_them_by_parameters(tmp_path: Path) -> None:
    """A second session finds the same file untouched; other parameters get another file."""
    first = ClipCache(tmp_path).valid_vertical(duration_s=1.0)
    mtime = first.stat().st_mtime_ns
    again = ClipCache(tmp_path).valid_vertical(duration_s=1.0)
    assert again == first and again.stat().st_mtime_ns == mtime
    assert ClipCache(tmp_path).valid_vertical(duration_s=1.5) != first
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp leftovers


def test_make_clip_is_deterministic_and_pads_with_a_free_box(tmp_path: Path) -> None:
    """Same parameters, same bytes; extra_bytes adds a trailing 'free' box ffprobe ignores."""
    a = make_clip(tmp_path / "a.mp4", width=360, height=640, duration_s=1.0)
    b = make_clip(tmp_path / "b.mp4", width=360, height=640, duration_s=1.0)
    assert a.read_bytes() == b.read_bytes()
    padded = make_clip(tmp_path / "p.mp4", width=360, height=640, duration_s=1.0, extra_bytes=MIB)
    assert padded.stat().st_size == a.stat().st_size + MIB
    assert top_level_boxes(padded)[-1] == ("free", a.stat().st_size, MIB)
    assert float(probe(padded)["format"]["duration"]) == pytest.approx(1.0, abs=0.05)


@pytest.mark.parametrize(
    "kwargs",
    [{"width": 200}, {"height": 5000}, {"fps": 1}, {"fps": 61}, {"width": 721}],
)
def test_make_large_clip_refuses_unpublishable_parameters(
    tmp_path: Path, kwargs: dict[str, Any]
) -> None:
    """The large clip promises a valid video, so out-of-range sizes and rates are a ValueError."""
    with pytest.raises(ValueError):
        make_large_clip(tmp_path / "x.mp4", MIB, **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_samples_module_runs_as_a_command(tmp_path: Path) -> None:
    """python -m reelflow.samples OUT --duration --width --height writes that clip."""
    out = tmp_path / "demo.mp4"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "reelflow.samples",
            str(out),
            "--duration",
            "1.5",
            "--width",
            "360",
            "--height",
            "640",
        ],
        check=True,
        capture_output=True,
        cwd=REPO,
    )
    info = probe(out)
    assert (stream(info, "video")["width"], stream(info, "video")["height"]) == (360, 640)
    assert float(info["format"]["duration"]) == pytest.approx(1.5, abs=0.05)
