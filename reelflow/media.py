"""The ffmpeg edge: ffprobe and frame grabs through ffmpeg-python, nothing else.

Every call gets a ``MediaInput``: a location plus the demuxer chosen from the magic bytes
(``-f mov`` or ``-f matroska``, never ffmpeg's own format guessing, so no playlist, concat or
other indirection demuxer is reachable) and a ``-protocol_whitelist`` limited to what that
location needs (``file`` for a path in the local store, ``http,tcp`` for the loopback relay of
``reelflow.relay``, which is how sources and S3 objects reach ffmpeg). MOV external data
references stay off (``enable_drefs=0``) and ffmpeg follows no redirect. Failures are mapped
here, once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ffmpeg

from reelflow.errors import InputRejectedError, MediaToolError

PROBE_TIMEOUT_S = 60
THUMBNAIL_WIDTH_PX = 640
# Seek this far into the clip: past fades from black and title cards, cheap with input seeking.
THUMBNAIL_SEEK_FRACTION = 0.1
THUMBNAIL_MAX_SEEK_S = 5.0
# The `thumbnail` filter picks the most representative of this many frames after the seek,
# which skips a black or blurred frame without decoding the whole clip.
THUMBNAIL_CANDIDATE_FRAMES = 24
# Container (from rules.sniff_container) → the one ffmpeg demuxer allowed to read it.
DEMUXERS = {"mp4": "mov", "mov": "mov", "webm": "matroska", "mkv": "matroska"}
RELAY_PROTOCOLS = "http,tcp"
FILE_PROTOCOLS = "file"


@dataclass(frozen=True)
class MediaInput:
    """What ffmpeg may open, how it must parse it and which protocols it may use for it."""

    url: str
    demuxer: str
    protocols: str

    @classmethod
    def for_file(cls, path: str | os.PathLike[str], container: str) -> MediaInput:
        # "file:" + absolute path: a name like "concat:a|b" stays a file name.
        return cls(f"file:{Path(path).resolve()}", demuxer_for(container), FILE_PROTOCOLS)

    @classmethod
    def for_relay(cls, url: str, container: str) -> MediaInput:
        if not url.startswith("http://127.0.0.1:"):
            raise ValueError("ffmpeg reads URLs only through reelflow's loopback relay")
        return cls(url, demuxer_for(container), RELAY_PROTOCOLS)


def demuxer_for(container: str) -> str:
    try:
        return DEMUXERS[container]
    except KeyError:
        raise ValueError(f"no demuxer is allowed for container {container!r}") from None


def input_options(inp: MediaInput) -> dict[str, Any]:
    """ffmpeg input options: explicit demuxer, protocol whitelist, no references or redirects."""
    opts: dict[str, Any] = {"f": inp.demuxer, "protocol_whitelist": inp.protocols}
    if inp.demuxer == "mov":
        opts["enable_drefs"] = 0
    if inp.protocols == RELAY_PROTOCOLS:
        # rw_timeout is in microseconds: a stalled relay read fails instead of hanging.
        opts |= {"rw_timeout": str(PROBE_TIMEOUT_S * 1_000_000), "max_redirects": 0}
    return opts


def _tail(stderr: bytes | None, limit: int = 600) -> str:
    text = (stderr or b"").decode("utf-8", "replace").strip()
    return text[-limit:]


def probe(inp: MediaInput) -> dict[str, Any]:
    """ffprobe ``inp``; an input ffprobe cannot parse is a InputRejectedError (bad input)."""
    try:
        result: dict[str, Any] = ffmpeg.probe(inp.url, **input_options(inp))
    except ffmpeg.Error as exc:
        tail = _tail(exc.stderr)
        raise InputRejectedError(
            f"ffprobe cannot read the file as a video: {tail.splitlines()[-1] if tail else ''}",
            reason="unreadable_media",
            stderr_tail=tail,
        ) from exc
    except FileNotFoundError as exc:  # the ffprobe binary itself is missing
        raise MediaToolError("ffprobe is not installed (apt-get install ffmpeg)") from exc
    return result


def thumbnail_time_s(duration_s: float) -> float:
    return round(min(THUMBNAIL_MAX_SEEK_S, max(0.0, duration_s * THUMBNAIL_SEEK_FRACTION)), 3)


def grab_thumbnail(inp: MediaInput, out_path: Path, *, at_s: float) -> Path:
    """Write a ``THUMBNAIL_WIDTH_PX``-wide JPEG of a representative frame near ``at_s``."""
    tmp = out_path.with_name(f".{out_path.name}.{os.getpid()}.tmp.jpg")
    stream = (
        ffmpeg.input(inp.url, ss=at_s, **input_options(inp))  # input seeking: to a keyframe
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
