"""The pure publish rules: post options, requests rebuilt from a row, the next step."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reelflow.errors import InputRejectedError
from reelflow.publish_rules import (
    DONE_STATES,
    FAILED,
    MAX_CAPTION_UTF16_UNITS,
    MODES,
    PENDING,
    POLL_ONLY_STATES,
    PRIVACY_LEVELS,
    SCOPE_PUBLISH,
    UPLOADING,
    PublishRequest,
    asks_creator_info,
    direct_post_info,
    next_step,
    post_options,
    request_from_options,
    select_publish,
)


@dataclass(frozen=True)
class Row:
    status: str
    fail_reason: str | None = None
    publish_id: str | None = "p1"
    inits: int = 1
    video_size: int = 100


@dataclass(frozen=True)
class Remote:
    status: str
    uploaded_bytes: int | None = None


requests_ = st.builds(
    PublishRequest,
    account=st.just("creator"),
    mode=st.sampled_from(MODES),
    privacy=st.sampled_from((None, *PRIVACY_LEVELS)),
    caption=st.one_of(st.none(), st.text(max_size=40)),
    again=st.booleans(),
)


@given(requests_)
def test_post_options_round_trip_through_a_row(request: PublishRequest) -> None:
    """A row's recorded options rebuild a request that records the same options."""
    options = post_options(request)
    again = request_from_options(options, request.account, again=request.again)
    assert post_options(again) == options
    assert again.mode == request.mode


def test_inbox_records_only_its_mode() -> None:
    """Inbox posts leave caption and privacy to the creator in the app."""
    assert post_options(PublishRequest("a", "inbox", None, "hi")) == {"mode": "inbox"}
    assert direct_post_info(PublishRequest("a", "inbox", None, "hi"), {}, 0) is None


def test_direct_defaults_to_self_only() -> None:
    """Direct Post without a privacy level records SELF_ONLY and an empty caption."""
    assert post_options(PublishRequest("a", "direct", None, None)) == {
        "mode": "direct",
        "privacy_level": "SELF_ONLY",
        "caption": "",
    }


def test_post_options_refuse_what_tiktok_would() -> None:
    """Mode, privacy and the caption limit are checked wherever a request was built."""
    for bad, reason in (
        (PublishRequest("a", "none", None, None), "invalid_mode"),
        (PublishRequest("a", "direct", "FRIENDS", None), "invalid_privacy"),
        (
            PublishRequest("a", "direct", None, "x" * (MAX_CAPTION_UTF16_UNITS + 1)),
            "caption_too_long",
        ),
    ):
        with pytest.raises(InputRejectedError) as err:
            post_options(bad)
        assert err.value.reason == reason


def test_direct_post_info_keeps_the_creators_settings() -> None:
    """The creator's disabled interactions stay disabled; the caption becomes the title."""
    info = direct_post_info(
        PublishRequest("a", "direct", "PUBLIC_TO_EVERYONE", "hi"), {"duet_disabled": True}, 1500
    )
    assert info == {
        "privacy_level": "PUBLIC_TO_EVERYONE",
        "disable_comment": False,
        "disable_duet": True,
        "disable_stitch": False,
        "brand_content_toggle": False,
        "brand_organic_toggle": False,
        "video_cover_timestamp_ms": 1500,
        "title": "hi",
    }


@given(st.sampled_from(sorted(DONE_STATES)), st.none() | st.builds(Remote, st.text()))
def test_done_rows_stay_done(status: str, remote: Remote | None) -> None:
    """A finished publish is never inited or polled again, whatever TikTok says."""
    assert next_step(Row(status), remote).action == "done"


@given(st.sampled_from(sorted(POLL_ONLY_STATES)))
def test_poll_only_rows_never_init(status: str) -> None:
    """Every byte acknowledged (or past the deadline): only polling remains."""
    assert next_step(Row(status), None).action == "poll"


def test_failed_rows() -> None:
    """FAILED is terminal unless TikTok's reason is ``internal`` (a fresh publish)."""
    assert next_step(Row(FAILED, fail_reason="spam"), None).action == "failed"
    step = next_step(Row(FAILED, fail_reason="internal"), None)
    assert (step.action, step.reason) == ("init", "retry_after_internal_failure")


def test_first_init_and_init_after_refusal() -> None:
    """A row without a session is inited; the reason says whether it is the first."""
    assert next_step(Row(PENDING, publish_id=None, inits=0), None).reason == "first_init"
    assert next_step(Row(PENDING, inits=1), None).reason == "init_after_refusal"


@given(st.integers(0, 200), st.integers(1, 150))
def test_live_session_continues_from_tiktoks_position(uploaded: int, size: int) -> None:
    """An uploading row continues from TikTok's uploaded_bytes, or polls once it has all."""
    step = next_step(Row(UPLOADING, video_size=size), Remote("PROCESSING_UPLOAD", uploaded))
    if uploaded >= size:
        assert step.action == "poll"
    else:
        assert (step.action, step.from_byte) == ("upload", uploaded)


def test_live_session_unknown_or_failed_remotely() -> None:
    """TikTok not knowing the publish_id means a re-init; FAILED remotely means failed."""
    assert next_step(Row(UPLOADING), None).reason == "publish_id_unknown_to_tiktok"
    assert next_step(Row(UPLOADING), Remote("FAILED")).action == "failed"
    assert next_step(Row(UPLOADING), Remote("PUBLISH_COMPLETE")).action == "poll"


def test_creator_is_asked_for_direct_post_and_for_inbox_with_the_publish_scope() -> None:
    """Direct Post always checks the creator; inbox only when creator_info is allowed at all."""
    direct = PublishRequest("creator", "direct", "SELF_ONLY", None)
    inbox = PublishRequest("creator", "inbox", None, None)
    assert asks_creator_info(direct, frozenset())
    assert asks_creator_info(inbox, {SCOPE_PUBLISH, "video.upload"})
    assert not asks_creator_info(inbox, {"video.upload"})


@dataclass(frozen=True)
class Known:
    status: str
    generation: int
    post_options: dict[str, str]
    created_ts: float


def test_select_publish_plain_then_again_of_the_same_options() -> None:
    """Plain requests find generation 0 (whatever its caption); again finds its own options."""
    one, two = {"mode": "direct", "caption": "one"}, {"mode": "direct", "caption": "two"}
    plain = Known("published", 0, one, 1.0)
    encore = Known("published", 1, two, 2.0)
    assert select_publish([], one, again=False) is None
    assert select_publish([encore, plain], two, again=False) is plain
    assert select_publish([plain, encore], two, again=True) is encore
    assert select_publish([plain, encore], one, again=True) is None  # a new generation
    failed = Known("failed", 0, one, 1.0)
    assert select_publish([failed, encore], one, again=False) is encore  # the latest alive
    assert select_publish([failed], one, again=False) is failed  # the same answer every time
