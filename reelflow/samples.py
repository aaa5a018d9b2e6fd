"""Synthetic sample videos made with the real ffmpeg binary.

Owns: the ffmpeg command lines that turn lavfi test sources (patterns, sine audio, noise) into
files, and writing those files atomically (temp sibling, fsync, rename). ``make demo`` and the
test clip cache use it.

Must not: probe, validate or judge media. :func:`make_clip` deliberately makes clips a validator
must reject (1 fps, 200x200, 0.5 s) because tests need them; only :func:`make_large_clip`, whose
promise is "a valid video of at least N bytes", enforces the publishable limits.

Outputs are deterministic for a given ffmpeg build (bitexact muxing, no metadata, seeded noise),
so content-addressed keys (SHA-256) stay stable across runs.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from reelflow.durable import fsync_path
from reelflow.errors import MediaToolError

DEFAULT_FFMPEG = "ffmpeg"
MIB = 1024 * 1024

# The limits a publishable clip must respect (TikTok's documented ranges); make_large_clip's
# output has to pass validation, so it refuses parameters outside them.
MIN_SIDE_PX = 360
MAX_SIDE_PX = 4096
MIN_FPS = 23.0
MAX_FPS = 60.0
MIN_DURATION_S = 1.0

PATTERNS = frozenset(
    {"testsrc", "testsrc2", "smptebars", "smptehdbars", "rgbtestsrc", "color", "noise"}
)
CONTAINERS = frozenset({"mp4", "mov", "webm", "mkv"})
VIDEO_CODECS = frozenset({"libx264", "libx265", "libvpx-vp9"})
# What each container may carry here: WebM is VP8/VP9 only by its spec; MP4/MOV are what
# cameras and phones write (H.264, HEVC); Matroska (OBS's default) carries any of them.
CODECS_BY_CONTAINER = {
    "mp4": frozenset({"libx264", "libx265"}),
    "mov": frozenset({"libx264", "libx265"}),
    "webm": frozenset({"libvpx-vp9"}),
    "mkv": frozenset({"libx264", "libx265", "libvpx-vp9"}),
}
# ffmpeg's muxer name for each container (-f): Matroska's is "matroska".
MUXERS = {"mp4": "mp4", "mov": "mov", "webm": "webm", "mkv": "matroska"}
ROTATIONS_DEG = frozenset({0, 90, 180, 270})

SINE_HZ = 440
AUDIO_RATE_HZ = 48_000
_SINE_SOURCE = f"sine=frequency={SINE_HZ}:sample_rate={AUDIO_RATE_HZ}"
STDERR_TAIL_CHARS = 2_000

# Lossy-but-near-lossless x264 on full-range noise: qp 0 would be smaller per frame only by a
# little yet switches the profile to High 4:4:4 Predictive, which many decoders refuse; qp 1
# keeps Constrained Baseline. Measured 2.0 bytes per noise pixel per frame (CAVLC on noise costs
# more than raw yuv420p's 1.5); the guess sits a little below, so the first try lands a few
# percent over min_bytes, and a short result is retried with the measured ratio.
_NOISE_QP = 1
_NOISE_BYTES_PER_PIXEL_GUESS = 1.95
_NOISE_SAFETY = 1.03
_LARGE_ATTEMPTS = 4

_FREE_BOX_HEADER = 8


def make_clip(
    path: str | os.PathLike[str],
    *,
    width: int = 720,
    height: int = 1280,
    fps: float = 30,
    duration_s: float = 20.0,
    vcodec: str = "libx264",
    audio: bool = True,
    pattern: str = "testsrc2",
    container: str = "mp4",
    extra_bytes: int = 0,
    video: bool = True,
    faststart: bool = True,
    preset: str = "veryfast",
    rotate_deg: int = 0,
    ffmpeg: str = DEFAULT_FFMPEG,
) -> Path:
    """Encode a synthetic clip to ``path`` and return it.

    H.264 or HEVC (yuv420p) + AAC sine in MP4/MOV/MKV, or VP9 + Opus in WebM (or MKV).
    ``extra_bytes`` pads an MP4 with a trailing ``free`` box (valid ISO-BMFF that players skip),
    so size-driven code can be exercised without longer encodes. ``faststart=False`` leaves
    ``moov`` after ``mdat`` (what a camera writes, and what a truncated upload loses).
    ``video=False`` gives an audio-only file. ``rotate_deg`` (MP4/MOV) stores the picture as
    encoded with a display matrix turning it, as phones record portrait video: a 1280x720
    picture with ``rotate_deg=90`` is shown 720x1280.
    """
    out = Path(path)
    if not (video or audio):
        raise ValueError("a clip needs video, audio or both")
    if container not in CONTAINERS:
        raise ValueError(f"container must be one of {sorted(CONTAINERS)}, not {container!r}")
    if vcodec not in VIDEO_CODECS:
        raise ValueError(f"vcodec must be one of {sorted(VIDEO_CODECS)}, not {vcodec!r}")
    if video and vcodec not in CODECS_BY_CONTAINER[container]:
        raise ValueError(
            f"{container} does not carry {vcodec} here; it takes "
            f"{', '.join(sorted(CODECS_BY_CONTAINER[container]))}"
        )
    if rotate_deg not in ROTATIONS_DEG or (rotate_deg and container not in ("mp4", "mov")):
        raise ValueError("rotate_deg is 0, 90, 180 or 270, and needs mp4 or mov")
    if pattern not in PATTERNS:
        raise ValueError(f"pattern must be one of {sorted(PATTERNS)}, not {pattern!r}")
    # yuv420p subsamples chroma 2x2, so libx264/libvpx refuse odd dimensions.
    if width <= 0 or height <= 0 or width % 2 or height % 2:
        raise ValueError(f"width and height must be positive and even, got {width}x{height}")
    if fps <= 0 or duration_s <= 0:
        raise ValueError("fps and duration_s must be positive")
    if extra_bytes < 0 or 0 < extra_bytes < _FREE_BOX_HEADER:
        raise ValueError(f"extra_bytes must be 0 or at least {_FREE_BOX_HEADER}")
    if extra_bytes and container not in ("mp4", "mov"):
        raise ValueError("extra_bytes pads with an ISO-BMFF box; it needs mp4 or mov")

    inputs: list[str] = []
    output: list[str] = []
    if video:
        inputs += ["-f", "lavfi", "-i", _video_source(pattern, width, height, fps)]
        output += ["-map", "0:v", *_video_codec_args(vcodec, fps, preset, container)]
    if audio:
        inputs += ["-f", "lavfi", "-i", _SINE_SOURCE]
        output += ["-map", f"{1 if video else 0}:a"]
        output += ["-c:a", "libopus", "-b:a", "96k"] if container == "webm" else ["-c:a", "aac"]
    # lavfi sources are endless; -t on the output is what ends the clip.
    output += ["-t", _seconds(duration_s)]
    moov_first = faststart and container in ("mp4", "mov")
    if moov_first:
        output += ["-movflags", "+faststart"]
    fmt = MUXERS[container]
    if not (extra_bytes or rotate_deg):
        return ffmpeg_write(out, inputs, output, fmt=fmt, ffmpeg=ffmpeg)
    # Pad or turn before the final rename, so nobody ever sees the first pass under ``path``.
    with _replacing(out) as staged:
        ffmpeg_write(staged, inputs, output, fmt=fmt, ffmpeg=ffmpeg)
        if rotate_deg:
            # ffmpeg 5 drops a rotate tag given while encoding; a stream-copy pass keeps it as
            # the track's display matrix (what a phone writes).
            turned = staged.with_name(staged.name + ".turned")
            turn = ["-map", "0", "-c", "copy", "-metadata:s:v:0", f"rotate={rotate_deg}"]
            turn += ["-movflags", "+faststart"] if moov_first else []
            try:
                ffmpeg_write(turned, ["-i", str(staged)], turn, fmt=fmt, ffmpeg=ffmpeg)
                os.replace(turned, staged)
            finally:
                turned.unlink(missing_ok=True)
        if extra_bytes:
            _append_free_box(staged, extra_bytes)
    return out


def make_large_clip(
    path: str | os.PathLike[str],
    min_bytes: int,
    *,
    width: int = 720,
    height: int = 1280,
    fps: float = 30,
    audio: bool = True,
    ffmpeg: str = DEFAULT_FFMPEG,
) -> Path:
    """Encode a valid H.264 clip of at least ``min_bytes`` bytes (a few percent more), quickly.

    The picture is temporal noise, which no encoder can compress, so the size is reached in a
    couple of seconds of video (100 MiB is ~2 s at 720x1280, encoded in ~1 s). When even the
    1 s minimum of full-frame noise would be far too big, only a top band of the frame is noise
    and the rest is flat. Frames and band come from an estimate of bytes per noise pixel,
    re-measured and retried (a bounded number of times) if the file fell short.
    """
    out = Path(path)
    if min_bytes <= 0:
        raise ValueError("min_bytes must be positive")
    if not (MIN_SIDE_PX <= width <= MAX_SIDE_PX and MIN_SIDE_PX <= height <= MAX_SIDE_PX):
        raise ValueError(f"sides must be within {MIN_SIDE_PX}-{MAX_SIDE_PX} px")
    if width % 2 or height % 2:
        raise ValueError("width and height must be even (yuv420p)")
    if not MIN_FPS <= fps <= MAX_FPS:
        raise ValueError(f"fps must be within {MIN_FPS:g}-{MAX_FPS:g}")

    min_frames = math.ceil(MIN_DURATION_S * fps)
    bytes_per_noise_px = _NOISE_BYTES_PER_PIXEL_GUESS
    frames = band = 0
    for _ in range(_LARGE_ATTEMPTS):
        noise_px = min_bytes * _NOISE_SAFETY / bytes_per_noise_px
        frames = max(min_frames, math.ceil(noise_px / (width * height)))
        # Whole macroblock rows keep the size proportional to the band; never shrink on retry.
        band = min(height, max(band, 16 * math.ceil(noise_px / frames / width / 16)))
        _encode_noise(
            out,
            width=width,
            height=height,
            band=band,
            fps=fps,
            frames=frames,
            audio=audio,
            ffmpeg=ffmpeg,
        )
        size = out.stat().st_size
        if size >= min_bytes:
            return out
        bytes_per_noise_px = size / (frames * width * band)
    raise MediaToolError(
        f"noise clip stayed below {min_bytes} bytes after {_LARGE_ATTEMPTS} attempts",
        path=str(out),
        frames=frames,
    )


def ffmpeg_write(
    path: str | os.PathLike[str],
    input_args: Sequence[str],
    output_args: Sequence[str],
    *,
    fmt: str,
    ffmpeg: str = DEFAULT_FFMPEG,
) -> Path:
    """Run ffmpeg into a temp sibling of ``path``, fsync it, and rename it into place.

    ``fmt`` is passed as ``-f`` because the temp name's suffix says nothing to ffmpeg. A reader
    therefore sees either no file or a complete one, never a half-written clip.
    """
    out = Path(path)
    cmd = [ffmpeg, "-hide_banner", "-nostdin", "-loglevel", "error", "-y", *input_args]
    # bitexact + no metadata: the same inputs give the same bytes (stable SHA-256 keys).
    cmd += ["-map_metadata", "-1", "-fflags", "+bitexact"]
    cmd += ["-flags:v", "+bitexact", "-flags:a", "+bitexact"]
    with _replacing(out) as tmp:
        _run([*cmd, *output_args, "-f", fmt, str(tmp)])
    return out


def _encode_noise(
    out: Path,
    *,
    width: int,
    height: int,
    band: int,
    fps: float,
    frames: int,
    audio: bool,
    ffmpeg: str,
) -> None:
    source = (
        f"color=c=gray:size={width}x{height}:rate={fps:g},"
        # allf=t+u: uniform noise that changes every frame, so neither intra nor inter
        # prediction finds anything; the filter's seed is fixed, so output is reproducible.
        "noise=alls=100:allf=t+u"
    )
    if band < height:
        # A flat area below the band costs next to nothing (skipped macroblocks).
        source += f",drawbox=x=0:y={band}:w={width}:h={height - band}:color=gray:t=fill"
    inputs = ["-f", "lavfi", "-i", f"{source},format=yuv420p"]
    output = ["-map", "0:v", "-c:v", "libx264", "-preset", "ultrafast", "-qp", str(_NOISE_QP)]
    output += ["-g", str(max(1, round(fps * 2)))]
    if audio:
        inputs += ["-f", "lavfi", "-i", _SINE_SOURCE]
        output += ["-map", "1:a", "-c:a", "aac"]
    # -t rather than -frames:v: with -frames:v the muxer stops the audio early too.
    output += ["-t", _seconds(frames / fps), "-movflags", "+faststart"]
    ffmpeg_write(out, inputs, output, fmt="mp4", ffmpeg=ffmpeg)


def _video_source(pattern: str, width: int, height: int, fps: float) -> str:
    size = f"size={width}x{height}:rate={fps:g}"
    if pattern == "color":
        source = f"color=c=0x3366cc:{size}"
    elif pattern == "noise":
        source = f"color=c=gray:{size},noise=alls=100:allf=t+u"
    else:
        source = f"{pattern}={size}"
    # Converting inside the graph keeps libx264 from picking yuv444p for RGB sources.
    return f"{source},format=yuv420p"


def _video_codec_args(vcodec: str, fps: float, preset: str, container: str) -> list[str]:
    # A 2 s GOP gives cut points for stream-copy concatenation and seeking.
    gop = ["-g", str(max(1, round(fps * 2)))]
    if vcodec == "libx264":
        # One encoder thread: x264's frame threads made 1 in 40 encodes differ by a few bits when
        # the machine was loaded (measured), and these clips must be byte-identical every time.
        one_thread = ["-threads", "1"]
        return ["-c:v", "libx264", "-preset", preset, "-pix_fmt", "yuv420p", *one_thread, *gop]
    if vcodec == "libx265":
        # One thread pool and one frame thread, for the same reason as x264; "hvc1" is the
        # sample entry Apple writes and QuickTime requires (ffmpeg's default is "hev1"), and
        # Matroska has no such tag to set.
        x265 = ["-x265-params", "log-level=error:pools=1:frame-threads=1"]
        tag = [] if container == "mkv" else ["-tag:v", "hvc1"]
        return ["-c:v", "libx265", "-preset", preset, "-pix_fmt", "yuv420p", *x265, *tag, *gop]
    # libvpx-vp9's default "good" deadline runs ~20x slower than realtime at this size.
    speed = ["-deadline", "realtime", "-cpu-used", "8", "-row-mt", "1"]
    return ["-c:v", "libvpx-vp9", *speed, "-b:v", "1M", "-pix_fmt", "yuv420p", *gop]


def _append_free_box(path: Path, extra_bytes: int) -> None:
    # A 32-bit box size tops out at 4 GiB; beyond that ISO-BMFF uses size=1 + a 64-bit largesize.
    if extra_bytes < 2**32:
        header = extra_bytes.to_bytes(4, "big") + b"free"
    else:
        header = (1).to_bytes(4, "big") + b"free" + extra_bytes.to_bytes(8, "big")
    with path.open("ab") as f:
        f.write(header)
        # Extending with truncate() zero-fills sparsely: padding costs no I/O.
        f.truncate(f.tell() + extra_bytes - len(header))
        f.flush()
        os.fsync(f.fileno())


@contextlib.contextmanager
def _replacing(out: Path) -> Iterator[Path]:
    """A temp sibling of ``out`` to write; when the block ends without an error it is fsynced
    and renamed over ``out`` (and the directory fsynced), otherwise it is removed."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_sibling(out)
    try:
        yield tmp
        fsync_path(tmp)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_path(out.parent)


def _temp_sibling(path: Path) -> Path:
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    os.close(fd)
    # mkstemp creates 0600; a sample clip is no secret, and other users (a container's ffprobe,
    # the web server of `make demo`) may need to read it.
    os.chmod(name, 0o644)
    return Path(name)


def _run(cmd: list[str]) -> None:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    except FileNotFoundError as exc:
        raise MediaToolError(f"ffmpeg not found: {cmd[0]}", stderr_tail="") from exc
    if proc.returncode != 0:
        tail = proc.stderr[-STDERR_TAIL_CHARS:]
        last_line = tail.strip().splitlines()[-1] if tail.strip() else "no stderr"
        raise MediaToolError(
            f"ffmpeg exited with {proc.returncode}: {last_line}",
            stderr_tail=tail,
            returncode=proc.returncode,
        )


def _seconds(value: float) -> str:
    return f"{value:.6f}".rstrip("0").rstrip(".")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m reelflow.samples", description="Write a synthetic sample video."
    )
    parser.add_argument("out", type=Path, help="output file (.mp4, .mov, .webm or .mkv)")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds (default 20)")
    parser.add_argument("--width", type=int, default=720)
    parser.add_argument("--height", type=int, default=1280)
    parser.add_argument("--fps", type=float, default=30)
    parser.add_argument("--pattern", default="testsrc2", choices=sorted(PATTERNS))
    parser.add_argument("--no-audio", action="store_true")
    parser.add_argument(
        "--min-bytes", type=int, default=None, help="make a noise clip of at least this size"
    )
    args = parser.parse_args(argv)

    if args.min_bytes is not None:
        out = make_large_clip(
            args.out,
            args.min_bytes,
            width=args.width,
            height=args.height,
            fps=args.fps,
            audio=not args.no_audio,
        )
    else:
        container = args.out.suffix.lstrip(".").lower() or "mp4"
        out = make_clip(
            args.out,
            width=args.width,
            height=args.height,
            fps=args.fps,
            duration_s=args.duration,
            audio=not args.no_audio,
            pattern=args.pattern,
            container=container,
            vcodec="libvpx-vp9" if container == "webm" else "libx264",
        )
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
