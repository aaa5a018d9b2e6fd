"""The media checks TikTok runs on a finished upload, and the ffprobe edge that feeds them.

This module owns the accepted containers, codecs, picture sizes, frame rates and duration, and the
documented ``fail_reason`` each violation gives. :func:`check_media` is pure (a probe dict in, a
reason out); :func:`ffprobe_file` is the only I/O. It must not decide statuses (``status`` does)
and must not reuse the client's checks in ``tasks/validate.py`` or ``reelflow.tiktok.plan``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ffmpeg

VIDEO_CODECS = frozenset({"h264", "hevc", "vp8", "vp9"})
MIN_FPS, MAX_FPS = 23.0, 60.0
MIN_SIDE_PX, MAX_SIDE_PX = 360, 4096


def _rate(text: Any) -> float:
    num, _, den = str(text or "0/0").partition("/")
    try:
        return float(num) / float(den or 1)
    except (ValueError, ZeroDivisionError):
        return 0.0


def check_media(probe: Mapping[str, Any], max_duration_s: float) -> str | None:
    """The documented ``fail_reason`` for a probed upload, or None when TikTok would accept it."""
    fmt = probe.get("format") or {}
    names = set(str(fmt.get("format_name", "")).split(","))
    video = next((s for s in probe.get("streams", []) if s.get("codec_type") == "video"), None)
    if video is None or not names & {"mov", "mp4", "webm"}:
        return "file_format_check_failed"
    codec = video.get("codec_name")
    # ffprobe names Matroska and WebM alike; a "webm" carrying H.264/HEVC is really MKV.
    if codec not in VIDEO_CODECS or ("webm" in names and codec not in {"vp8", "vp9"}):
        return "file_format_check_failed"
    width, height = int(video.get("width") or 0), int(video.get("height") or 0)
    if not (MIN_SIDE_PX <= width <= MAX_SIDE_PX and MIN_SIDE_PX <= height <= MAX_SIDE_PX):
        return "picture_size_check_failed"
    fps = _rate(video.get("avg_frame_rate")) or _rate(video.get("r_frame_rate"))
    if not MIN_FPS <= fps <= MAX_FPS:
        return "frame_rate_check_failed"
    duration = float(fmt.get("duration") or video.get("duration") or 0.0)
    if duration <= 0:
        return "file_format_check_failed"
    return "duration_check_failed" if duration > max_duration_s else None


def ffprobe_file(path: Path) -> Mapping[str, Any] | None:
    """ffprobe's JSON for ``path``, or None when ffprobe cannot read it as media."""
    try:
        result: Mapping[str, Any] = ffmpeg.probe(str(path))
    except ffmpeg.Error:
        return None
    return result
