"""Session clip cache: valid and deliberately broken video inputs, made once by the real ffmpeg.

Owns: the catalogue of test inputs (one valid vertical H.264+AAC clip, a valid VP9 WebM, the
formats creators record (iPhone-style MOV in H.264 and HEVC, OBS-style Matroska), a valid clip of
100 MiB and more, and bad inputs that each break one thing: empty, not a video, moov
missing, no video stream, a still image, 1 fps, 200x200, 5000x5000, too long) and where they live.
Files are named by their generator and parameters (plus the ffmpeg version), so a later session
finds them in the caller's cache directory (e.g. ``<repo>/.cache/clips``) instead of encoding
again. Every file is written to a temp sibling and renamed, so a killed session leaves no torn
clip behind and concurrent sessions at worst encode the same file twice.

Must not: assert anything about the clips or know which validation rule each one trips; tests and
the validator own that. Generation itself lives in :mod:`reelflow.samples`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from reelflow.samples import DEFAULT_FFMPEG, MIB, ffmpeg_write, make_clip, make_large_clip

# Bump when a generator changes what it writes, so stale cached files are not reused.
CACHE_VERSION = 1

VALID_WIDTH, VALID_HEIGHT, VALID_FPS = 720, 1280, 30
VALID_DURATION_S = 3.0
MEDIUM_MIN_BYTES = 12 * MIB
LARGE_MIN_BYTES = 100 * MIB
LOW_FPS = 1
TINY_SIDE_PX = 200
HUGE_SIDE_PX = 5000
TOO_LONG_S = 12.0  # over a max_duration_s of 10 set by the test
ELEVEN_MINUTES_S = 660.0  # over TikTok's 10-minute limit, the production default
_LOOP_SEGMENT_S = 10.0
_VERTICAL: dict[str, Any] = {"width": VALID_WIDTH, "height": VALID_HEIGHT, "fps": VALID_FPS}

BAD_KINDS = (
    "empty",
    "text",
    "truncated",
    "audio_only",
    "still_image",
    "one_fps",
    "tiny",
    "huge",
    "too_long",
)


@functools.cache
def ffmpeg_version(ffmpeg: str = DEFAULT_FFMPEG) -> str:
    """First line of ``ffmpeg -version``: part of every cache key, as encoders change output."""
    out = subprocess.run([ffmpeg, "-version"], capture_output=True, text=True, check=True)
    return out.stdout.splitlines()[0]


def probe(path: str | os.PathLike[str], ffprobe: str = "ffprobe") -> dict[str, Any]:
    """ffprobe's JSON view (format + streams) of ``path``; raises if ffprobe rejects the file."""
    out = subprocess.run(
        [
            ffprobe,
            "-v",
            "error",
            "-print_format",
            "json",
            "-show_format",
            "-show_streams",
            os.fspath(path),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def top_level_boxes(path: str | os.PathLike[str]) -> list[tuple[str, int, int]]:
    """``(type, offset, size)`` of each top-level ISO-BMFF box, stopping at a torn one."""
    boxes = []
    size_total = os.path.getsize(path)
    with open(path, "rb") as f:
        offset = 0
        while offset + 8 <= size_total:
            f.seek(offset)
            header = f.read(16)
            size, kind = int.from_bytes(header[:4], "big"), header[4:8].decode("latin-1")
            if size == 1:
                size = int.from_bytes(header[8:16], "big")
            elif size == 0:
                size = size_total - offset
            if size < 8 or offset + size > size_total:
                break
            boxes.append((kind, offset, size))
            offset += size
    return boxes


class ClipCache:
    """Paths to generated clips under ``root``, each made on first use and reused afterwards."""

    def __init__(self, root: str | os.PathLike[str], *, ffmpeg: str = DEFAULT_FFMPEG) -> None:
        self.root = Path(root)
        self.ffmpeg = ffmpeg

    # --- valid inputs -----------------------------------------------------------------------

    def valid_vertical(self, duration_s: float = VALID_DURATION_S) -> Path:
        """720x1280, 30 fps, H.264 + AAC, faststart MP4."""
        return self._clip("valid", **_VERTICAL, duration_s=duration_s)

    def valid_webm_vp9(self, duration_s: float = VALID_DURATION_S) -> Path:
        """720x1280, 30 fps, VP9 + Opus WebM."""
        return self._clip(
            "valid", "webm", **_VERTICAL, duration_s=duration_s, vcodec="libvpx-vp9",
            container="webm",
        )  # fmt: skip

    def iphone_mov(self, codec: str = "h264", duration_s: float = VALID_DURATION_S) -> Path:
        """What an iPhone writes, in miniature: QuickTime (``ftyp`` brand ``qt  ``), ``moov``
        after ``mdat``, a 1280x720 H.264 or HEVC (``hvc1``) picture turned 90° by the track's
        display matrix (shown 720x1280), AAC audio, 30 fps."""
        vcodec = {"h264": "libx264", "hevc": "libx265"}[codec]
        return self._clip(
            f"iphone-{codec}", "mov", width=VALID_HEIGHT, height=VALID_WIDTH, fps=VALID_FPS,
            duration_s=duration_s, vcodec=vcodec, container="mov", faststart=False,
            rotate_deg=90, preset="ultrafast" if codec == "hevc" else "veryfast",
        )  # fmt: skip

    def mkv_h264(self, duration_s: float = VALID_DURATION_S) -> Path:
        """What OBS records by default: Matroska (DocType ``matroska``) with H.264 + AAC,
        720x1280, 30 fps."""
        return self._clip("mkv-h264", "mkv", **_VERTICAL, duration_s=duration_s, container="mkv")

    def mkv_labelled_webm(self) -> Path:
        """:meth:`mkv_h264` with its EBML DocType rewritten to ``webm`` (an EBML Void element
        keeps every size): H.264 in a file that claims to be WebM."""
        return self._get("mkv-labelled-webm", "webm", self._make_labelled_webm)

    # The short names the e2e tests' ``clips`` fixture uses, so a ClipCache can serve as it.
    valid = valid_vertical
    webm = valid_webm_vp9

    def medium(self, min_bytes: int = MEDIUM_MIN_BYTES) -> Path:
        """A valid 720x1280 30 fps H.264 + AAC clip of at least ``min_bytes`` (~10 % more).

        Sized for multipart tests: 12 MiB is three 5 MiB parts. Same generator as :meth:`large`.
        """
        return self._noise(min_bytes)

    def large(self, min_bytes: int = LARGE_MIN_BYTES) -> Path:
        """A valid 720x1280 30 fps H.264 + AAC clip of at least ``min_bytes`` (100 MiB: ~2 s)."""
        return self._noise(min_bytes)

    # --- inputs a validator must reject -------------------------------------------------------

    def bad(self, kind: str) -> Path:
        """The bad input ``kind``, one of :data:`BAD_KINDS` (short names for test ids).

        ``"too_long"`` is 12 s: bad only when the test sets a maximum below that (e.g. 10 s).
        """
        makers: dict[str, Callable[[], Path]] = {
            "empty": self.zero_byte,
            "text": self.text_as_mp4,
            "truncated": self.truncated_mp4,
            "audio_only": self.audio_only,
            "still_image": self.still_image,
            "one_fps": self.low_fps,
            "tiny": self.tiny,
            "huge": self.huge,
            "too_long": self.too_long,
        }
        if kind not in makers:
            raise KeyError(f"unknown bad input {kind!r}; known: {', '.join(BAD_KINDS)}")
        return makers[kind]()

    def zero_byte(self) -> Path:
        return self._get("empty", "mp4", lambda p: _write_atomic(p, b""))

    def text_as_mp4(self) -> Path:
        """A UTF-8 text file wearing a .mp4 name."""
        text = b"This is not a video. It is a text file named like one.\n" * 64
        return self._get("text", "mp4", lambda p: _write_atomic(p, text))

    def truncated_mp4(self) -> Path:
        """The first half of a moov-at-the-end MP4: an upload cut short, with no moov atom."""
        return self._get("truncated", "mp4", self._make_truncated)

    def audio_only(self) -> Path:
        """An MP4 holding only an AAC stream (3 s)."""
        return self._clip("audio-only", video=False, duration_s=VALID_DURATION_S)

    def still_image(self, fmt: str = "png") -> Path:
        """One 720x1280 PNG (or JPEG) frame renamed .mp4; ffprobe sees an image, no duration."""
        codec = {"png": ["-c:v", "png"], "jpeg": ["-c:v", "mjpeg", "-pix_fmt", "yuvj420p"]}[fmt]
        source = ["-f", "lavfi", "-i", f"testsrc2=size={VALID_WIDTH}x{VALID_HEIGHT}:rate=1"]
        return self._get(
            f"still-{fmt}",
            "mp4",
            lambda p: ffmpeg_write(
                p, source, ["-frames:v", "1", *codec], fmt="image2pipe", ffmpeg=self.ffmpeg
            ),
        )

    def low_fps(self, fps: int = LOW_FPS) -> Path:
        """720x1280 H.264 + AAC at ``fps`` frames per second (3 s)."""
        return self._clip("low-fps", **{**_VERTICAL, "fps": fps}, duration_s=VALID_DURATION_S)

    def tiny(self, side_px: int = TINY_SIDE_PX) -> Path:
        """``side_px`` square, 30 fps, H.264 + AAC (3 s)."""
        return self._clip(
            "tiny", width=side_px, height=side_px, fps=VALID_FPS, duration_s=VALID_DURATION_S
        )

    def huge(self, side_px: int = HUGE_SIDE_PX) -> Path:
        """``side_px`` square, 24 fps, 1 s: over the 4096 px limit but valid in every other way."""
        # 1 s, not less, so that only the size rule fails; a flat colour keeps 25 MP frames
        # cheap for ultrafast x264 (~2 s for 24 frames on 2 cores).
        return self._clip(
            "huge", width=side_px, height=side_px, fps=24, duration_s=1.0, pattern="color",
            preset="ultrafast",
        )  # fmt: skip

    def too_long(self, duration_s: float = TOO_LONG_S) -> Path:
        """720x1280 30 fps H.264 + AAC lasting ``duration_s``; bad only under a lower maximum."""
        return self._clip("too-long", **_VERTICAL, duration_s=duration_s, preset="ultrafast")

    def eleven_minutes(self) -> Path:
        """540x960 30 fps H.264 + AAC lasting 11 minutes: too long under the production default.

        Encoding 11 minutes takes ~20 s; one 10 s segment concatenated 66 times takes ~1-2 s.
        """
        return self._get("eleven-minutes", "mp4", self._make_looped)

    # --- machinery ------------------------------------------------------------------------------

    def path_for(self, name: str, ext: str, **params: Any) -> Path:
        """Where the clip ``name`` made with ``params`` is (or will be) cached."""
        key = {"v": CACHE_VERSION, "name": name, "ffmpeg": ffmpeg_version(self.ffmpeg), **params}
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        return self.root / f"{name}-{digest}.{ext}"

    def _clip(self, name: str, ext: str = "mp4", **kwargs: Any) -> Path:
        """``make_clip(**kwargs)``, keyed by exactly those arguments."""
        return self._get(name, ext, lambda p: make_clip(p, ffmpeg=self.ffmpeg, **kwargs), **kwargs)

    def _noise(self, min_bytes: int) -> Path:
        return self._get(
            "noise",
            "mp4",
            lambda p: make_large_clip(p, min_bytes, ffmpeg=self.ffmpeg),
            min_bytes=min_bytes,
        )

    def _get(self, name: str, ext: str, make: Callable[[Path], object], **params: Any) -> Path:
        path = self.path_for(name, ext, **params)
        # Writers rename complete files into place, so existence means a whole clip.
        if not path.exists():
            self.root.mkdir(parents=True, exist_ok=True)
            make(path)
        return path

    def _make_truncated(self, path: Path) -> None:
        with tempfile.TemporaryDirectory(dir=self.root) as tmp:
            whole = make_clip(
                Path(tmp) / "whole.mp4", **_VERTICAL, duration_s=VALID_DURATION_S,
                faststart=False, ffmpeg=self.ffmpeg,
            )  # fmt: skip
            kinds = [kind for kind, _, _ in top_level_boxes(whole)]
            # Without faststart the muxer writes moov last; cutting in half must lose it.
            if "moov" not in kinds or kinds.index("moov") < kinds.index("mdat"):
                raise RuntimeError(f"expected moov after mdat, got boxes {kinds}")
            data = whole.read_bytes()
        _write_atomic(path, data[: len(data) // 2])

    def _make_labelled_webm(self, path: Path) -> None:
        data = self.mkv_h264().read_bytes()
        doctype = b"\x42\x82\x88matroska"  # DocType element, size 8
        webm = b"\x42\x82\x84webm" + b"\xec\x82\x00\x00"  # DocType "webm" + a 4-byte Void
        at = data.find(doctype, 0, 64)
        if at < 0:
            raise RuntimeError("no Matroska DocType in the EBML header")
        _write_atomic(path, data[:at] + webm + data[at + len(doctype) :])

    def _make_looped(self, path: Path) -> None:
        with tempfile.TemporaryDirectory(dir=self.root) as tmp:
            segment = make_clip(
                Path(tmp) / "segment.mp4", width=540, height=960, fps=VALID_FPS,
                duration_s=_LOOP_SEGMENT_S, pattern="testsrc", preset="ultrafast",
                ffmpeg=self.ffmpeg,
            )  # fmt: skip
            # The concat demuxer rebases timestamps per file and keeps every frame; -stream_loop
            # with -c copy drops a frame every few loops (avg_frame_rate 29.98 instead of 30).
            listing = Path(tmp) / "segments.txt"
            listing.write_text(
                f"file '{segment.name}'\n" * math.ceil(ELEVEN_MINUTES_S / _LOOP_SEGMENT_S)
            )
            output = ["-map", "0", "-c", "copy", "-t", f"{ELEVEN_MINUTES_S:g}"]
            ffmpeg_write(
                path,
                ["-f", "concat", "-i", str(listing)],
                [*output, "-movflags", "+faststart"],
                fmt="mp4",
                ffmpeg=self.ffmpeg,
            )


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(name, 0o644)
        os.replace(name, path)
    finally:
        Path(name).unlink(missing_ok=True)
