"""The containers creators record, as pure rules: which demuxer, which label, which may be posted."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from reelflow.errors import InputRejectedError, PublishRefusedError
from reelflow.media import DEMUXERS, MediaInput, input_options
from reelflow.planning import CONTAINER_EXT, CONTENT_TYPES
from reelflow.rules import (
    POSTABLE_CONTENT_TYPES,
    check_postable,
    display_size,
    interpret_probe,
    rotation_deg,
    sniff_container,
)
from reelflow.samples import make_clip

# The EBML header ffmpeg 5.1 writes for Matroska: EBMLVersion, ReadVersion, MaxIDLength,
# MaxSizeLength, DocType "matroska", DocTypeVersion 4, DocTypeReadVersion 2.
MKV_HEAD = bytes.fromhex(
    "1a45dfa3a34286810142f7810142f2810442f381084282886d6174726f736b614287810442858102"
)
QT_HEAD = bytes.fromhex("000000146674797071742020000002007174202000000008776964650010")


def _ebml(doctype: bytes) -> bytes:
    body = b"\x42\x86\x81\x01" + b"\x42\x82" + bytes([0x80 | len(doctype)]) + doctype
    return b"\x1a\x45\xdf\xa3" + bytes([0x80 | len(body)]) + body + b"\x18\x53\x80\x67"


def _probe(container_name: str, **video: Any) -> dict[str, Any]:
    stream = {
        "codec_type": "video",
        "codec_name": "h264",
        "width": 720,
        "height": 1280,
        "avg_frame_rate": "30/1",
    } | video
    return {
        "streams": [stream, {"codec_type": "audio", "codec_name": "aac"}],
        "format": {"duration": "3.0", "format_name": container_name},
    }


def test_matroska_and_quicktime_heads_as_ffmpeg_writes_them() -> None:
    """OBS-style Matroska is ``mkv`` (video/x-matroska, .mkv, -f matroska); an iPhone's
    ``qt  `` brand is ``mov`` (video/quicktime, -f mov)."""
    assert sniff_container(MKV_HEAD) == "mkv"
    assert (CONTENT_TYPES["mkv"], CONTAINER_EXT["mkv"], DEMUXERS["mkv"]) == (
        "video/x-matroska",
        "mkv",
        "matroska",
    )
    assert sniff_container(QT_HEAD) == "mov"
    assert (CONTENT_TYPES["mov"], DEMUXERS["mov"]) == ("video/quicktime", "mov")


@given(st.binary(max_size=600))
def test_every_accepted_head_has_one_explicit_demuxer(head: bytes) -> None:
    """Whatever the first bytes, a container sniff accepts has a label, a key extension and
    exactly one demuxer (mov or matroska), and ffmpeg's options name it and a protocol
    whitelist; anything else is a typed refusal."""
    try:
        container = sniff_container(head)
    except InputRejectedError as exc:
        assert exc.reason in {"empty", "bad_magic", "container", "playlist"}
        return
    assert DEMUXERS[container] in {"mov", "matroska"}
    assert container in CONTENT_TYPES and container in CONTAINER_EXT
    opts = input_options(MediaInput.for_file("/tmp/x", container))
    assert opts["f"] == DEMUXERS[container] and opts["protocol_whitelist"] == "file"


@given(
    st.binary(min_size=1, max_size=12).filter(
        lambda d: d.rstrip(b"\0") not in (b"webm", b"matroska")
    )
)
def test_other_ebml_doctypes_are_refused(doctype: bytes) -> None:
    """Only DocType webm and matroska are videos here."""
    with pytest.raises(InputRejectedError) as err:
        sniff_container(_ebml(doctype))
    assert err.value.reason == "container"


@given(st.binary(min_size=4, max_size=4))
@example(b"<MPD")  # found by hypothesis: was taken for a DASH manifest
@example(b"#EXT")
def test_ftyp_brand_decides_mov_or_mp4(brand: bytes) -> None:
    """ftyp with major brand ``qt  `` → mov, any other brand → mp4 (both read by -f mov),
    whatever text the brand spells."""
    head = b"\x00\x00\x00\x14ftyp" + brand + b"\x00" * 8
    assert sniff_container(head) == ("mov" if brand == b"qt  " else "mp4")


@given(st.sampled_from(["video/mp4", "video/quicktime", "video/webm"]))
def test_tiktok_containers_are_postable(content_type: str) -> None:
    """MP4, MOV and WebM are what TikTok's upload takes: posted as stored."""
    check_postable(content_type, media_id="m1")


@given(st.text(max_size=40).filter(lambda t: t not in POSTABLE_CONTENT_TYPES))
def test_anything_else_is_refused_before_tiktok(content_type: str) -> None:
    """Matroska (or any other type) is a terminal PublishRefusedError naming the type and
    the stream-copy remux, never a retry."""
    with pytest.raises(PublishRefusedError) as err:
        check_postable(content_type, media_id="m1")
    assert err.value.reason == "container_not_postable" and not err.value.retryable
    assert "m1" in str(err.value) and "-c copy" in str(err.value)


def test_matroska_media_is_refused_with_its_label() -> None:
    """The refusal names video/x-matroska, not WebM."""
    with pytest.raises(PublishRefusedError) as err:
        check_postable(CONTENT_TYPES["mkv"], media_id="abc")
    assert "video/x-matroska" in str(err.value) and "video/webm is" not in str(err.value)


ANGLES = st.one_of(
    st.integers(min_value=-720, max_value=720).map(float),
    st.floats(min_value=-720, max_value=720, allow_nan=False),
)


@given(ANGLES, st.integers(min_value=1, max_value=4096), st.integers(min_value=1, max_value=4096))
def test_display_size_swaps_for_quarter_turns(angle: float, w: int, h: int) -> None:
    """A display matrix turning the picture by a quarter turn shows it with sides swapped;
    a half turn or none keeps them; the angle is always one of 0/90/180/270."""
    stream = {"width": w, "height": h, "side_data_list": [{"rotation": angle}]}
    turned = rotation_deg(stream)
    assert turned in (0, 90, 180, 270)
    assert turned == round(angle / 90) * 90 % 360
    assert display_size(stream) == ((h, w) if turned in (90, 270) else (w, h))


def _not_a_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return True
    return False


@given(
    st.one_of(
        st.none(),
        st.text(max_size=8).filter(_not_a_number),
        st.just(float("nan")),
        st.just("1e9"),
        st.just([90]),
    )
)
def test_unreadable_rotations_are_no_rotation(raw: Any) -> None:
    """A missing, non-numeric, NaN or absurd angle leaves the picture as encoded."""
    stream = {"width": 1280, "height": 720, "tags": {"rotate": raw}}
    assert rotation_deg(stream) == 0 and display_size(stream) == (1280, 720)


def test_the_older_rotate_tag_counts_too() -> None:
    """ffmpeg before 5 reported the turn as a ``rotate`` tag only."""
    assert display_size({"width": 1920, "height": 1080, "tags": {"rotate": "270"}}) == (1080, 1920)


def test_iphone_portrait_is_shown_portrait() -> None:
    """A 1280x720 HEVC track turned by -90 (ffprobe's display matrix) is a 720x1280 video."""
    meta = interpret_probe(
        _probe(
            "mov,mp4,m4a,3gp,3g2,mj2",
            codec_name="hevc",
            width=1280,
            height=720,
            side_data_list=[{"side_data_type": "Display Matrix", "rotation": -90}],
        ),
        container="mov",
        max_duration_s=600,
    )
    assert (meta.width, meta.height, meta.video_codec) == (720, 1280, "h265")
    assert meta.content_type == "video/quicktime"


@pytest.mark.parametrize("codec", ["h264", "hevc", "vp9"])
def test_matroska_holds_any_accepted_codec(codec: str) -> None:
    """An .mkv with H.264, HEVC or VP9 is valid and labelled video/x-matroska."""
    meta = interpret_probe(_probe("matroska,webm", codec_name=codec), container="mkv",
                           max_duration_s=600)  # fmt: skip
    assert (meta.container, meta.content_type) == ("mkv", "video/x-matroska")


def test_webm_holding_h264_is_named_matroska() -> None:
    """An EBML file claiming WebM while holding H.264 is refused as Matroska labelled WebM."""
    with pytest.raises(InputRejectedError) as err:
        interpret_probe(_probe("matroska,webm"), container="webm", max_duration_s=600)
    assert err.value.reason == "container" and "video/x-matroska" in str(err.value)


@pytest.mark.parametrize(
    "kwargs,says",
    [
        ({"container": "webm", "vcodec": "libx264"}, "webm does not carry libx264"),
        ({"container": "mp4", "vcodec": "libvpx-vp9"}, "mp4 does not carry libvpx-vp9"),
        ({"container": "mkv", "rotate_deg": 90}, "rotate_deg"),
        ({"container": "mov", "rotate_deg": 45}, "rotate_deg"),
        ({"container": "avi"}, "container must be one of"),
        ({"container": "mkv", "extra_bytes": 64}, "needs mp4 or mov"),
    ],
)
def test_sample_maker_refuses_combinations_it_cannot_write(
    kwargs: dict[str, Any], says: str, tmp_path: Any
) -> None:
    """make_clip checks container, codec and rotation before running ffmpeg."""
    with pytest.raises(ValueError, match=says):
        make_clip(tmp_path / "x", **kwargs)
    assert not list(tmp_path.iterdir())
