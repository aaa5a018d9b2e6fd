"""Post options (interactions, commercial content disclosure): the pure rules, every spelling."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reelflow.errors import InputRejectedError, PublishRefusedError
from reelflow.ingest_options import (
    check_ingest_options,
    check_publish_request,
    post_options_from_text,
    post_options_text,
)
from reelflow.publish_rules import (
    CREATOR_SETTING,
    INTERACTIONS,
    POST_OPTION_KEYS,
    PRIVACY_LEVELS,
    PostOptions,
    PublishRequest,
    check_creator_settings,
    check_post_options,
    direct_post_info,
    parse_flag,
    post_options,
    post_options_from,
    request_from_options,
)

posts = st.builds(
    PostOptions,
    disable_comment=st.none() | st.booleans(),
    disable_duet=st.none() | st.booleans(),
    disable_stitch=st.none() | st.booleans(),
    brand_content_toggle=st.booleans(),
    brand_organic_toggle=st.booleans(),
)
creators = st.fixed_dictionaries({v: st.booleans() for v in CREATOR_SETTING.values()})
visible = st.sampled_from([p for p in PRIVACY_LEVELS if p != "SELF_ONLY"])


def _direct(post: PostOptions, privacy: str = "PUBLIC_TO_EVERYONE") -> PublishRequest:
    return check_publish_request("creator", "direct", privacy, "hi", post=post)


@given(posts, visible)
def test_recorded_options_rebuild_the_same_request(post: PostOptions, privacy: str) -> None:
    """A ledger row's options give back the request, post options included."""
    request = _direct(post, privacy)
    assert request_from_options(post_options(request), "creator") == request


def test_a_request_without_post_options_records_what_older_rows_recorded() -> None:
    """No option set: the canonical options (and so the publish's hash) are unchanged."""
    request = check_publish_request("creator", "direct", "SELF_ONLY", "hi")
    assert post_options(request) == {
        "mode": "direct",
        "privacy_level": "SELF_ONLY",
        "caption": "hi",
    }


@given(posts, visible, creators)
def test_post_info_never_allows_what_the_creator_turned_off(
    post: PostOptions, privacy: str, creator: dict[str, bool]
) -> None:
    """After the creator check passes, post_info keeps every creator lock and every asked
    disable, and sends both disclosure toggles as given."""
    request = _direct(post, privacy)
    try:
        check_creator_settings(request.post, creator, "creator")
    except PublishRefusedError as exc:
        key = next(
            k for k in INTERACTIONS if getattr(post, k) is False and creator[CREATOR_SETTING[k]]
        )
        assert exc.reason == f"{key.removeprefix('disable_')}_disabled_by_creator"
        return
    info = direct_post_info(request, creator, 0)
    assert info is not None
    for key in INTERACTIONS:
        expected = bool(creator[CREATOR_SETTING[key]]) or bool(getattr(post, key))
        assert info[key] is expected
    assert info["brand_content_toggle"] is post.brand_content_toggle
    assert info["brand_organic_toggle"] is post.brand_organic_toggle


@pytest.mark.parametrize("privacy", [None, "SELF_ONLY"])
def test_branded_content_cannot_be_private(privacy: str | None) -> None:
    """A paid partnership posted SELF_ONLY (the default) is refused before anything starts."""
    with pytest.raises(InputRejectedError) as err:
        check_publish_request(
            "creator", "direct", privacy, None, post=PostOptions(brand_content_toggle=True)
        )
    assert err.value.reason == "branded_content_private"


def test_your_brand_may_be_private() -> None:
    """Only branded content needs an audience: promoting one's own business may be SELF_ONLY."""
    request = check_publish_request(
        "creator", "direct", "SELF_ONLY", None, post=PostOptions(brand_organic_toggle=True)
    )
    assert request.post.brand_organic_toggle


@pytest.mark.parametrize("key", POST_OPTION_KEYS)
def test_an_inbox_upload_cannot_carry_a_post_option(key: str) -> None:
    """Inbox posts are finished in the app: a turned-on option would be lost, so it is refused;
    a false one asks for nothing and passes."""
    with pytest.raises(InputRejectedError) as err:
        check_publish_request("creator", "inbox", None, None, post=PostOptions(**{key: True}))
    assert err.value.reason == "post_options_need_direct"
    if key in INTERACTIONS:
        request = check_publish_request(
            "creator", "inbox", None, None, post=PostOptions(**{key: False})
        )
        assert request.post == PostOptions()


def test_post_options_without_an_account_are_refused() -> None:
    """An ingest that only stores cannot disclose or disable anything."""
    with pytest.raises(InputRejectedError) as err:
        check_ingest_options(
            chunk_size_bytes=None,
            concurrency=None,
            account=None,
            caption=None,
            privacy=None,
            mode=None,
            publish_at=None,
            default_chunk_size_bytes=8 << 20,
            default_concurrency=4,
            memory_budget_bytes=1 << 30,
            now=datetime.now(UTC),
            post=PostOptions(disable_comment=True),
        )
    assert err.value.reason == "no_account"


@pytest.mark.parametrize("bad", [1, 0, "true", 2.0])
def test_a_post_option_must_be_a_boolean(bad: Any) -> None:
    """1, "true" or a float is not a boolean: refused, not coerced."""
    with pytest.raises(InputRejectedError) as err:
        check_post_options(PostOptions(disable_duet=bad), mode="direct", privacy_level="SELF_ONLY")
    assert err.value.reason == "invalid_post_option"
    with pytest.raises(InputRejectedError):
        post_options_from({"brand_organic_toggle": bad})


@given(posts)
def test_metadata_text_round_trips(post: PostOptions) -> None:
    """Upload metadata's "true"/"false" text gives back the options it recorded."""
    assert post_options_from_text(post_options_text(post)) == post


@pytest.mark.parametrize(
    ("text", "value"),
    [("true", True), ("TRUE", True), ("1", True), ("false", False), ("no", False), ("", None)],
)
def test_flag_text(text: str, value: bool | None) -> None:
    assert parse_flag("disable_comment", text) is value


@pytest.mark.parametrize("text", ["on", "y", "truthy", "2", "\x00"])
def test_flag_text_refused(text: str) -> None:
    with pytest.raises(InputRejectedError) as err:
        parse_flag("disable_comment", text)
    assert err.value.reason == "invalid_post_option"


def test_creator_lock_refusal_names_the_interaction() -> None:
    """Asking for comments on an account whose comments are off: comment_disabled_by_creator."""
    with pytest.raises(PublishRefusedError) as err:
        check_creator_settings(PostOptions(disable_comment=False), {"comment_disabled": True}, "a")
    assert err.value.reason == "comment_disabled_by_creator"
    check_creator_settings(PostOptions(disable_comment=True), {"comment_disabled": True}, "a")
    check_creator_settings(PostOptions(), {"comment_disabled": True}, "a")
