"""The ffmpeg edge: ffprobe and frame grabs through ffmpeg-python, nothing else.

Inputs are a local path or an HTTP(S) URL (a presigned S3 URL works); ffmpeg reads what it
needs with range requests, so nothing is downloaded whole. Failures are mapped here, once.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import ffmpeg

from reelflow.errors import MediaToolError, ValidationError

PROBE_TIMEOUT_S = 60
THUMBNAIL_WIDTH_PX = 640
# Seek this far into the clip: past fades from black and title cards, cheap with input seeking.
THUMBNAIL_SEEK_FRACTION = 0.1
THUMBNAIL_MAX_SEEK_S = 5.0
# The `thumbnail` filter picks the most representative of this many frames after the seek,
# which skips a black or blurred frame without decoding the whole clip.
THUMBNAIL_CANDIDATE_FRAMES = 24


def _tail(stderr: bytes | None, limit: int = 600) -> str:
    text = (stderr or b"").decode("utf-8", "replace").strip()
    return text[-limit:]


def _net_options(url: str) -> dict[str, Any]:
    if url.startswith(("http://", "https://")):
        # rw_timeout is in microseconds; reconnect lets a long probe survive a dropped socket.
        return {"rw_timeout": str(PROBE_TIMEOUT_S * 1_000_000), "reconnect": 1}
    return {}


def probe(url: str) -> dict[str, Any]:
    """ffprobe ``url``; an input ffprobe cannot parse is a ValidationError (bad input)."""
    try:
        result: dict[str, Any] = ffmpeg.probe(url, **_net_options(url))
    except ffmpeg.Error as exc:
        tail = _tail(exc.stderr)
        raise ValidationError(
            f"ffprobe cannot read the file as a video: {tail.splitlines()[-1] if tail else ''}",
            reason="unreadable_media",
            stderr_tail=tail,
        ) from exc
    except FileNotFoundError as exc:  # the ffprobe binary itself is missing
        raise MediaToolError("ffprobe is not installed (apt-get install ffmpeg)") from exc
    return result


def thumbnail_time_s(duration_s: float) -> float:
    return round(min(THUMBNAIL_MAX_SEEK_S, max(0.0, duration_s * THUMBNAIL_SEEK_FRACTION)), 3)


def grab_thumbnail(url: str, out_path: Path, *, at_s: float) -> Path:
    """Write a ``THUMBNAIL_WIDTH_PX``-wide JPEG of a representative frame near ``at_s``."""
    tmp = out_path.with_name(f".{out_path.name}.{os.getpid()}.tmp.jpg")
    stream = (
        ffmpeg.input(url, ss=at_s, **_net_options(url))  # input seeking: jumps to a keyframe
        .filter("thumbnail", THUMBNAIL_CANDIDATE_FRAMES)
        .filter("scale", THUMBNAIL_WIDTH_PX, -2)
        .output(str(tmp), vframes=1, format="image2", vcodec="mjpeg", **{"q:v": 3})
        .overwrite_output()
    )
    try:
        stream.run(capture_stdout=True, capture_stderr=True)
    except ffmpeg.Error as exc:
        tmp.unlink(missing_ok=True)
        raise MediaToolError(
            "ffmpeg could not grab a thumbnail", stderr_tail=_tail(exc.stderr)
        ) from exc
    if not tmp.exists() or tmp.stat().st_size == 0:
        tmp.unlink(missing_ok=True)
        raise MediaToolError("ffmpeg produced no thumbnail frame")
    os.replace(tmp, out_path)
    return out_path
