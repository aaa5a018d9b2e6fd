"""Pure media rules: what bytes and what ffprobe output make a publishable video.

Input is plain data (the first bytes of a file, ffprobe's JSON as a dict); output is a
``VideoMeta`` or a ``InputRejectedError`` saying exactly which rule failed. The limits are
TikTok's (Content Posting API media transfer guide): H.264/H.265/VP8/VP9, 23-60 fps, 360-4096 px
each side, at most 4 GB, at most 10 minutes through the API.

Containers: MP4, MOV (QuickTime, as phones write it: ``qt  `` brand, ``moov`` after ``mdat``)
and WebM are stored and posted. Matroska (what OBS records) is stored, labelled as what it is
(``video/x-matroska``, ``.mkv``, never "WebM"), and :func:`check_postable` refuses to post it:
TikTok takes MP4, MOV and WebM only, and posting a remux would send TikTok bytes that were never
validated, scanned or stored (docs/formats.md).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from fractions import Fraction
from typing import Any

from reelflow.errors import InputRejectedError, PublishRefusedError
from reelflow.planning import CONTENT_TYPES, MAX_SOURCE_BYTES

MIN_FPS = 23.0
MAX_FPS = 60.0
MIN_SIDE_PX = 360
MAX_SIDE_PX = 4096
ALLOWED_CODECS = {"h264": "h264", "hevc": "h265", "vp8": "vp8", "vp9": "vp9"}
# Enough for an EBML header's DocType and for three 188-byte MPEG-TS packets.
MAGIC_BYTES_NEEDED = 4096
WEBM_CODECS = {"vp8", "vp9"}
TS_PACKET_BYTES = 188
# What the assembled object may differ from the validated source by: nothing but ffprobe's
# rounding (a remote probe and a local one can disagree in the last digits).
DURATION_TOLERANCE_S = 0.05
FPS_TOLERANCE = 0.01
# The Content-Types TikTok's upload PUT takes ("Send Video to TikTok Servers"): MP4, MOV, WebM.
POSTABLE_CONTENT_TYPES = frozenset({"video/mp4", "video/quicktime", "video/webm"})
REMUX_HINT = "ffmpeg -i IN.mkv -map 0 -c copy -movflags +faststart OUT.mp4"


@dataclass(frozen=True)
class VideoMeta:
    container: str  # mp4 | mov | webm | mkv
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


def _ebml_vint(data: bytes, pos: int, *, keep_marker: bool) -> tuple[int, int]:
    """An EBML variable-length integer at ``pos``: (value, position after it)."""
    if pos >= len(data) or data[pos] == 0:
        raise ValueError("bad EBML vint")
    first = data[pos]
    length = 8 - first.bit_length() + 1
    if pos + length > len(data):
        raise ValueError("truncated EBML vint")
    value = first if keep_marker else first & ((1 << (8 - length)) - 1)
    for b in data[pos + 1 : pos + length]:
        value = (value << 8) | b
    return value, pos + length


def ebml_doctype(head: bytes) -> str | None:
    """The DocType of the EBML header at the start of ``head`` ("webm", "matroska", ...)."""
    try:
        _, pos = _ebml_vint(head, 0, keep_marker=True)  # the EBML element id 1A45DFA3
        size, pos = _ebml_vint(head, pos, keep_marker=False)
        end = min(len(head), pos + size)
        while pos < end:
            element, pos = _ebml_vint(head, pos, keep_marker=True)
            length, pos = _ebml_vint(head, pos, keep_marker=False)
            if element == 0x4282:  # DocType
                return head[pos : pos + length].rstrip(b"\0").decode("ascii", "replace")
            pos += length
    except ValueError:
        return None
    return None


def _is_mpegts(head: bytes) -> bool:
    for offset, stride in ((0, TS_PACKET_BYTES), (4, TS_PACKET_BYTES + 4)):  # TS and M2TS
        if len(head) >= offset + 2 * stride + 1 and all(
            head[offset + i * stride] == 0x47 for i in range(3)
        ):
            return True
    return False


def sniff_container(head: bytes) -> str:
    """Return ``mp4``, ``mov``, ``webm`` or ``mkv`` from the first bytes, or raise
    InputRejectedError.

    ISO BMFF files start with a box whose type is ``ftyp`` at offset 4 (brand ``qt  ``:
    QuickTime); QuickTime files may also start with ``wide``/``moov``/``mdat``/``free`` boxes.
    EBML (1A 45 DF A3) is WebM when its DocType is ``webm`` and Matroska when it is
    ``matroska`` (labelled ``video/x-matroska``, never WebM); any other DocType is refused, as
    are MPEG-TS and playlists (HLS, DASH, ffconcat), which name other files instead of holding
    the video. The container chosen here is also the only demuxer ffmpeg may use
    (``reelflow.media.DEMUXERS``).
    """
    if not head:
        raise InputRejectedError("the file is empty (0 bytes)", reason="empty")
    if head[:4] == b"\x1a\x45\xdf\xa3":
        doctype = ebml_doctype(head)
        if doctype in ("webm", "matroska"):
            return "webm" if doctype == "webm" else "mkv"
        raise InputRejectedError(
            f"an EBML file of type {doctype!r}, neither WebM nor Matroska", reason="container"
        )
    box = head[4:8]
    if box == b"ftyp":
        # A file type box is unambiguous, whatever text follows it (a brand "<MPD" is still an
        # MP4), and ``-f mov`` follows no manifest: judged before the playlist heuristics.
        return "mov" if head[8:12] == b"qt  " else "mp4"
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if text.startswith(b"#EXTM3U") or text.startswith(b"ffconcat") or b"<MPD" in text[:512]:
        raise InputRejectedError(
            "a playlist (HLS/DASH/concat) that names other files, not a video",
            reason="playlist",
        )
    if _is_mpegts(head):
        raise InputRejectedError(
            "an MPEG transport stream (video/mp2t): TikTok takes MP4, MOV or WebM",
            reason="container",
        )
    if box in (b"moov", b"mdat", b"wide", b"free", b"skip"):
        return "mov"
    raise InputRejectedError(
        "not a video container: expected MP4/MOV ('ftyp' box) or WebM/Matroska (EBML) magic bytes",
        reason="bad_magic",
    )


def check_postable(content_type: str, *, media_id: str | None = None) -> None:
    """Refuse (``PublishRefusedError``, terminal) to post a container TikTok does not take.

    ``flows.publish.publish_stored_media`` (every publish path goes through it) calls this
    before any ledger row, init or byte. Matroska is the one stored container it refuses; the
    message says how to make it postable without re-encoding.
    """
    if content_type in POSTABLE_CONTENT_TYPES:
        return
    what = f"media {media_id}" if media_id else "this video"
    raise PublishRefusedError(
        f"{what} is {content_type}: TikTok takes MP4, MOV or WebM, so nothing was sent; "
        f"remux it without re-encoding ({REMUX_HINT}) and ingest the MP4",
        reason="container_not_postable",
    )


def check_size(size_bytes: int, max_bytes: int = MAX_SOURCE_BYTES) -> None:
    """Not empty, and at most ``max_bytes`` (REELFLOW_MAX_SIZE_BYTES; never over TikTok's 4 GiB)."""
    limit = min(max_bytes, MAX_SOURCE_BYTES)
    if size_bytes == 0:
        raise InputRejectedError("the file is empty (0 bytes)", reason="empty")
    if size_bytes > limit:
        raise InputRejectedError(
            f"the file is {size_bytes} bytes; the limit is {limit}{_readable(limit)}",
            reason="too_large",
        )


def _readable(n: int) -> str:
    if n >= 1024**3:
        return f" ({n / 1024**3:.3g} GiB)"
    return f" ({n / 1024**2:.3g} MiB)" if n >= 1024**2 else ""


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


def rotation_deg(stream: dict[str, Any]) -> int:
    """How far the player turns the picture (0, 90, 180, 270), from the stream's display
    matrix (ffprobe's side data) or the older ``rotate`` tag; anything unreadable is 0."""
    raw: Any = None
    for side in stream.get("side_data_list") or ():
        if isinstance(side, dict) and "rotation" in side:
            raw = side["rotation"]
            break
    if raw is None:
        raw = (stream.get("tags") or {}).get("rotate")
    try:
        turned = float(raw)
    except (TypeError, ValueError):
        return 0
    if turned != turned or abs(turned) > 3600:  # NaN, or not an angle anyone writes
        return 0
    return int(round(turned / 90.0)) * 90 % 360


def display_size(stream: dict[str, Any]) -> tuple[int, int]:
    """(width, height) as shown: a phone's portrait clip is a landscape picture turned 90°."""
    width, height = int(stream.get("width") or 0), int(stream.get("height") or 0)
    return (height, width) if rotation_deg(stream) in (90, 270) else (width, height)


def _duration(probe: dict[str, Any], stream: dict[str, Any]) -> float:
    for raw in (probe.get("format", {}).get("duration"), stream.get("duration")):
        try:
            if raw is not None and float(raw) > 0:
                return float(raw)
        except ValueError:
            continue
    return 0.0


def interpret_probe(probe: dict[str, Any], *, container: str, max_duration_s: float) -> VideoMeta:
    """Turn ffprobe's JSON into ``VideoMeta`` or raise ``InputRejectedError`` naming the rule."""
    streams = probe.get("streams", [])
    # Cover art in MP4 shows up as a video stream flagged attached_pic; it is not a video.
    videos = [
        s
        for s in streams
        if s.get("codec_type") == "video" and not s.get("disposition", {}).get("attached_pic")
    ]
    audios = [s for s in streams if s.get("codec_type") == "audio"]
    if not videos:
        raise InputRejectedError(
            "no video stream found (audio-only or not a video)", reason="no_video"
        )
    v = videos[0]
    codec_name = str(v.get("codec_name", "unknown"))
    format_names = str(probe.get("format", {}).get("format_name", ""))
    if codec_name in {"mjpeg", "png", "bmp", "gif", "webp"} or "image2" in format_names:
        raise InputRejectedError(f"a still image ({codec_name}), not a video", reason="still_image")
    if codec_name not in ALLOWED_CODECS:
        raise InputRejectedError(
            f"video codec {codec_name!r} is not accepted (H.264, H.265, VP8, VP9)",
            reason="codec",
        )
    width, height = display_size(v)
    for side, px in (("width", width), ("height", height)):
        if not MIN_SIDE_PX <= px <= MAX_SIDE_PX:
            raise InputRejectedError(
                f"{side} {px}px is outside {MIN_SIDE_PX}-{MAX_SIDE_PX}px ({width}x{height})",
                reason="resolution",
            )
    if container == "webm" and codec_name not in WEBM_CODECS:
        raise InputRejectedError(
            f"a WebM file must hold VP8 or VP9, this one holds {codec_name}: a Matroska file "
            "(video/x-matroska) labelled WebM",
            reason="container",
        )
    if _duration(probe, v) <= 0 or str(v.get("nb_frames", "")) == "0":
        raise InputRejectedError(
            "the video has no measurable duration (no frames)", reason="duration"
        )
    fps = _fps(v)
    if not MIN_FPS <= fps <= MAX_FPS:
        raise InputRejectedError(
            f"frame rate {fps:.2f} fps is outside {MIN_FPS:g}-{MAX_FPS:g} fps", reason="fps"
        )
    duration = _duration(probe, v)
    if duration > max_duration_s:
        raise InputRejectedError(
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


def compare_meta(validated: VideoMeta, stored: VideoMeta) -> list[str]:
    """How the assembled object differs from what was validated (empty: the same video)."""
    diffs = [
        f"{name} {a!r} != {b!r}"
        for name in (
            "container",
            "content_type",
            "width",
            "height",
            "video_codec",
            "has_audio",
            "audio_codec",
        )
        if (a := getattr(validated, name)) != (b := getattr(stored, name))
    ]
    if abs(validated.duration_s - stored.duration_s) > DURATION_TOLERANCE_S:
        diffs.append(f"duration_s {validated.duration_s} != {stored.duration_s}")
    if abs(validated.fps - stored.fps) > FPS_TOLERANCE:
        diffs.append(f"fps {validated.fps} != {stored.fps}")
    return diffs
