"""Pure media rules: magic bytes and ffprobe interpretation."""

from __future__ import annotations

from typing import Any

import pytest

from reelflow.errors import InputRejectedError
from reelflow.rules import check_size, interpret_probe, sniff_container


def probe(**video: Any) -> dict[str, Any]:
    stream = {
        "codec_type": "video",
        "codec_name": "h264",
        "width": 720,
        "height": 1280,
        "avg_frame_rate": "30/1",
    } | video
    return {
        "streams": [stream, {"codec_type": "audio", "codec_name": "aac"}],
        "format": {"duration": "12.5", "bit_rate": "800000", "format_name": "mov,mp4"},
    }


# An EBML header as ffmpeg writes it for WebM: EBMLVersion, ReadVersion, MaxIDLength,
# MaxSizeLength, DocType "webm", DocTypeVersion, DocTypeReadVersion.
WEBM_HEAD = bytes.fromhex(
    "1a45dfa39f4286810142f7810142f2810442f381084282847765626d42878104428581021853"
)


def test_sniff_recognises_mp4_mov_webm() -> None:
    """ftyp → mp4 (qt brand → mov), EBML → webm."""
    assert sniff_container(b"\x00\x00\x00\x18ftypisom" + b"\0" * 8) == "mp4"
    assert sniff_container(b"\x00\x00\x00\x14ftypqt  " + b"\0" * 8) == "mov"
    assert sniff_container(WEBM_HEAD) == "webm"


@pytest.mark.parametrize(
    "head,reason", [(b"", "empty"), (b"hello world, not a video", "bad_magic")]
)
def test_sniff_rejects_non_video(head: bytes, reason: str) -> None:
    """Empty and text files are refused with a typed reason."""
    with pytest.raises(InputRejectedError) as err:
        sniff_container(head)
    assert err.value.reason == reason


def test_size_limits() -> None:
    """0 bytes and > 4 GiB are refused."""
    with pytest.raises(InputRejectedError):
        check_size(0)
    with pytest.raises(InputRejectedError):
        check_size(4 * 1024**3 + 1)
    check_size(1)


def test_interpret_accepts_a_good_video() -> None:
    """A 720x1280 30 fps H.264 + AAC clip becomes VideoMeta."""
    meta = interpret_probe(probe(), container="mp4", max_duration_s=600)
    assert (meta.width, meta.height, meta.fps, meta.video_codec) == (720, 1280, 30.0, "h264")
    assert meta.has_audio and meta.duration_s == 12.5 and meta.bitrate == 800000


@pytest.mark.parametrize(
    "video,reason",
    [
        ({"avg_frame_rate": "1/1", "r_frame_rate": "1/1"}, "fps"),
        ({"avg_frame_rate": "120/1"}, "fps"),
        ({"width": 200, "height": 200}, "resolution"),
        ({"width": 5000, "height": 5000}, "resolution"),
        ({"codec_name": "mpeg4"}, "codec"),
        ({"codec_name": "png"}, "still_image"),
    ],
)
def test_interpret_rejects_rule_breakers(video: dict[str, Any], reason: str) -> None:
    """Each TikTok media rule has its own reason."""
    with pytest.raises(InputRejectedError) as err:
        interpret_probe(probe(**video), container="mp4", max_duration_s=600)
    assert err.value.reason == reason


def test_interpret_rejects_audio_only_and_too_long() -> None:
    """No video stream, or longer than the configured maximum."""
    audio_only = {"streams": [{"codec_type": "audio", "codec_name": "aac"}], "format": {}}
    with pytest.raises(InputRejectedError, match="no video stream"):
        interpret_probe(audio_only, container="mp4", max_duration_s=600)
    with pytest.raises(InputRejectedError) as err:
        interpret_probe(probe(), container="mp4", max_duration_s=10)
    assert err.value.reason == "too_long"
