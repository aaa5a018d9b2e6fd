"""Pure media rules: what bytes and what ffprobe output make a publishable video.

Input is plain data (the first bytes of a file, ffprobe's JSON as a dict); output is a
``VideoMeta`` or a ``ValidationError`` saying exactly which rule failed. The limits are
TikTok's (Content Posting API media transfer guide): MP4/MOV/WebM, H.264/H.265/VP8/VP9,
23-60 fps, 360-4096 px each side, at most 4 GB, at most 10 minutes through the API.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from fractions import Fraction
from typing import Any

from reelflow.errors import ValidationError
from reelflow.planning import CONTENT_TYPES, MAX_SOURCE_BYTES

MIN_FPS = 23.0
MAX_FPS = 60.0
MIN_SIDE_PX = 360
MAX_SIDE_PX = 4096
ALLOWED_CODECS = {"h264": "h264", "hevc": "h265", "vp8": "vp8", "vp9": "vp9"}
MAGIC_BYTES_NEEDED = 64


@dataclass(frozen=True)
class VideoMeta:
    container: str  # mp4 | mov | webm
    content_type: str
    duration_s: float
    width: int
    height: int
    fps: float
    video_codec: str
    bitrate: int | None
    has_audio: bool
    audio_codec: str | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def sniff_container(head: bytes) -> str:
    """Return ``mp4``, ``mov`` or ``webm`` from the first bytes, or raise ValidationError.

    ISO BMFF files start with a box whose type is ``ftyp`` at offset 4; QuickTime files may
    also start with ``wide``/``moov``/``mdat``/``free`` boxes. WebM is EBML (1A 45 DF A3).
    """
    if not head:
        raise ValidationError("the file is empty (0 bytes)", reason="empty")
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return "webm"
    box = head[4:8]
    if box == b"ftyp":
        brand = head[8:12]
        return "mov" if brand == b"qt  " else "mp4"
    if box in (b"moov", b"mdat", b"wide", b"free", b"skip"):
        return "mov"
    raise ValidationError(
        "not a video container: expected MP4/MOV ('ftyp' box) or WebM (EBML) magic bytes",
        reason="bad_magic",
    )


def check_size(size_bytes: int) -> None:
    if size_bytes == 0:
        raise ValidationError("the file is empty (0 bytes)", reason="empty")
    if size_bytes > MAX_SOURCE_BYTES:
        raise ValidationError(
            f"the file is {size_bytes} bytes; the limit is {MAX_SOURCE_BYTES} (4 GiB)",
            reason="too_large",
        )


def _fps(stream: dict[str, Any]) -> float:
    for key in ("avg_frame_rate", "r_frame_rate"):
        raw = stream.get(key) or "0/0"
        try:
            value = Fraction(raw)
        except (ValueError, ZeroDivisionError):
            continue
        if value > 0:
            return float(value)
    return 0.0


def _duration(probe: dict[str, Any], stream: dict[str, Any]) -> float:
    for raw in (probe.get("format", {}).get("duration"), stream.get("duration")):
        try:
            if raw is not None and float(raw) > 0:
                return float(raw)
        except ValueError:
            continue
    return 0.0


def interpret_probe(probe: dict[str, Any], *, container: str, max_duration_s: float) -> VideoMeta:
    """Turn ffprobe's JSON into ``VideoMeta`` or raise ``ValidationError`` naming the rule."""
    streams = probe.get("streams", [])
    # Cover art in MP4 shows up as a video stream flagged attached_pic; it is not a video.
    videos = [
        s
        for s in streams
        if s.get("codec_type") == "video" and not s.get("disposition", {}).get("attached_pic")
    ]
    audios = [s for s in streams if s.get("codec_type") == "audio"]
    if not videos:
        raise ValidationError(
            "no video stream found (audio-only or not a video)", reason="no_video"
        )
    v = videos[0]
    codec_name = str(v.get("codec_name", "unknown"))
    format_names = str(probe.get("format", {}).get("format_name", ""))
    if codec_name in {"mjpeg", "png", "bmp", "gif", "webp"} or "image2" in format_names:
        raise ValidationError(f"a still image ({codec_name}), not a video", reason="still_image")
    if codec_name not in ALLOWED_CODECS:
        raise ValidationError(
            f"video codec {codec_name!r} is not accepted (H.264, H.265, VP8, VP9)",
            reason="codec",
        )
    width, height = int(v.get("width") or 0), int(v.get("height") or 0)
    for side, px in (("width", width), ("height", height)):
        if not MIN_SIDE_PX <= px <= MAX_SIDE_PX:
            raise ValidationError(
                f"{side} {px}px is outside {MIN_SIDE_PX}-{MAX_SIDE_PX}px ({width}x{height})",
                reason="resolution",
            )
    fps = _fps(v)
    if not MIN_FPS <= fps <= MAX_FPS:
        raise ValidationError(
            f"frame rate {fps:.2f} fps is outside {MIN_FPS:g}-{MAX_FPS:g} fps", reason="fps"
        )
    duration = _duration(probe, v)
    if duration <= 0:
        raise ValidationError("the video has no measurable duration", reason="duration")
    if duration > max_duration_s:
        raise ValidationError(
            f"duration {duration:.1f}s exceeds the maximum of {max_duration_s:g}s",
            reason="too_long",
        )
    bitrate_raw = probe.get("format", {}).get("bit_rate") or v.get("bit_rate")

    return VideoMeta(
        container=container,
        content_type=CONTENT_TYPES[container],
        duration_s=round(duration, 3),
        width=width,
        height=height,
        fps=round(fps, 3),
        video_codec=ALLOWED_CODECS[codec_name],
        bitrate=int(bitrate_raw) if bitrate_raw and str(bitrate_raw).isdigit() else None,
        has_audio=bool(audios),
        audio_codec=str(audios[0].get("codec_name")) if audios else None,
    )
