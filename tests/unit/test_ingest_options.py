"""The pure request rules every caller shares: sizes, budget, publish options, names, times."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reelflow.errors import InputRejectedError
from reelflow.ingest_options import (
    MAX_CAPTION_UTF16_UNITS,
    MAX_CHUNK_BYTES,
    MAX_UPLOAD_CONCURRENCY,
    PUBLISH_AT_PAST_GRACE,
    check_account_name,
    check_caption,
    check_chunk_size,
    check_concurrency,
    check_ingest_options,
    check_memory_budget,
    check_publish_at,
    check_publish_request,
)
from reelflow.planning import S3_MIN_PART_BYTES, upload_buffer_bytes

MIB = 1024 * 1024
GIB = 1024 * MIB
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def options(**kw: Any) -> Any:
    base: dict[str, Any] = {
        "chunk_size_bytes": None,
        "concurrency": None,
        "account": None,
        "caption": None,
        "privacy": None,
        "mode": None,
        "publish_at": None,
        "default_chunk_size_bytes": 8 * MIB,
        "default_concurrency": 4,
        "memory_budget_bytes": GIB,
        "now": NOW,
    }
    return check_ingest_options(**(base | kw))


def reason(call: Any, *args: Any, **kw: Any) -> str:
    with pytest.raises(InputRejectedError) as refused:
        call(*args, **kw)
    assert "\n" not in str(refused.value)
    return refused.value.reason


@pytest.mark.parametrize("size", [0, -1, -5 * MIB, MAX_CHUNK_BYTES + 1, 6 * GIB])
def test_absurd_chunk_sizes_are_refused(size: int) -> None:
    """0, negative and over-5-GiB chunk sizes are refused with invalid_chunk_size."""
    assert reason(check_chunk_size, size) == "invalid_chunk_size"


@pytest.mark.parametrize("n", [0, -1, MAX_UPLOAD_CONCURRENCY + 1, 10_000])
def test_absurd_concurrency_is_refused(n: int) -> None:
    """Concurrency 0, -1 and over 64 is refused with invalid_concurrency."""
    assert reason(check_concurrency, n) == "invalid_concurrency"


@given(
    chunk=st.integers(min_value=1, max_value=MAX_CHUNK_BYTES),
    parallel=st.integers(min_value=1, max_value=MAX_UPLOAD_CONCURRENCY),
    budget=st.integers(min_value=16 * MIB, max_value=64 * GIB),
)
def test_memory_budget_accepts_exactly_what_fits(chunk: int, parallel: int, budget: int) -> None:
    """A combination passes iff its (concurrency + 1) part buffers fit the budget."""
    need = upload_buffer_bytes(chunk, parallel)
    assert need == max(chunk, S3_MIN_PART_BYTES) * (parallel + 1)
    if need <= budget:
        assert check_memory_budget(chunk, parallel, budget) == need
    else:
        with pytest.raises(InputRejectedError) as refused:
            check_memory_budget(chunk, parallel, budget)
        assert refused.value.reason == "over_memory_budget"
        assert str(need) in str(refused.value) and str(budget) in str(refused.value)


def test_over_budget_ingest_is_refused_and_defaults_fill_in() -> None:
    """512 MiB x (8 + 1) is over a 1 GiB budget; the defaults are used when nothing is given."""
    with pytest.raises(InputRejectedError, match="over the memory budget") as refused:
        options(chunk_size_bytes=512 * MIB, concurrency=8)
    assert refused.value.reason == "over_memory_budget"
    ok = options()
    assert (ok.chunk_size_bytes, ok.concurrency, ok.mode, ok.publish) == (8 * MIB, 4, "none", None)


@given(st.text(max_size=3000))
def test_caption_limit_counts_utf16_units(caption: str) -> None:
    """Captions pass iff their UTF-16 length is at most 2200 units."""
    units = len(caption.encode("utf-16-le")) // 2
    if units <= MAX_CAPTION_UTF16_UNITS:
        assert check_caption(caption) == caption
    else:
        assert reason(check_caption, caption) == "caption_too_long"


def test_caption_of_astral_emoji_counts_two_units_each() -> None:
    """1101 emoji from outside the BMP are 2202 units: refused, though only 1101 characters."""
    assert reason(check_caption, "🎬" * 1101) == "caption_too_long"
    assert check_caption("🎬" * 1100)


@pytest.mark.parametrize(
    "name", ["", " studio", "stu dio", "a/b", "../x", "x\x00", "-lead", "é", "a" * 65]
)
def test_bad_account_names_are_refused(name: str) -> None:
    """Names with spaces, slashes, NUL, a leading dash, non-ASCII or over 64 chars are refused."""
    assert reason(check_account_name, name) == "invalid_account_name"


@pytest.mark.parametrize("name", ["creator", "cli-creator", "studio.eu", "me@brand", "a" * 64])
def test_good_account_names_pass(name: str) -> None:
    """Ordinary local names pass unchanged."""
    assert check_account_name(name) == name


def test_publish_at_naive_or_past_is_refused() -> None:
    """A naive time, or one older than the grace, is refused; a recent or future one passes."""
    assert reason(check_publish_at, datetime(2026, 6, 1, 13), NOW) == "naive_publish_at"
    past = NOW - PUBLISH_AT_PAST_GRACE - timedelta(seconds=1)
    assert reason(check_publish_at, past, NOW) == "publish_at_in_past"
    assert check_publish_at(NOW - timedelta(seconds=30), NOW) is not None
    assert check_publish_at(NOW + timedelta(days=1), NOW) == NOW + timedelta(days=1)


@pytest.mark.parametrize(
    ("kw", "why"),
    [
        ({"privacy": "EVERYONE"}, "invalid_privacy"),
        ({"mode": "later", "account": "creator"}, "invalid_mode"),
        ({"mode": "direct"}, "no_account"),
        ({"publish_at": NOW + timedelta(hours=1)}, "no_account"),
        ({"account": "bad name"}, "invalid_account_name"),
        ({"concurrency": -1}, "invalid_concurrency"),
        ({"chunk_size_bytes": 0}, "invalid_chunk_size"),
    ],
)
def test_ingest_options_name_the_broken_rule(kw: dict[str, Any], why: str) -> None:
    """Each broken rule is refused with its own reason."""
    assert reason(options, **kw) == why


def test_publish_request_fills_privacy_for_direct_only() -> None:
    """Direct Post defaults to SELF_ONLY; inbox carries no privacy (chosen in the app)."""
    assert check_publish_request("creator", "direct", None, "hi").privacy == "SELF_ONLY"
    assert check_publish_request("creator", "inbox", None, None).privacy is None
    assert reason(check_publish_request, "creator", "none", None, None) == "invalid_mode"
