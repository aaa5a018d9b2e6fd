"""The pure window rules: which consecutive chunks one upload task sends."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from reelflow.tiktok.plan import MIB, plan_tiktok_upload, plan_tiktok_upload_with_chunk_size
from reelflow.tiktok.windows import chunk_starting_at, window_at

FOUR_GIB = 4 * 1024 * MIB
sizes = st.integers(min_value=1, max_value=FOUR_GIB)
preferences = st.integers(min_value=1, max_value=80_000_000)
budgets = st.integers(min_value=1, max_value=600 * MIB)


@settings(max_examples=300, deadline=None)
@given(size=sizes, preferred=preferences, window_bytes=budgets)
def test_windows_cover_every_chunk_once_in_order_within_the_budget(
    size: int, preferred: int, window_bytes: int
) -> None:
    """From byte 0, windows tile the plan: consecutive, non-empty, over budget only when alone."""
    plan = plan_tiktok_upload(size, preferred)
    seen: list[int] = []
    position = 0
    while position < plan.video_size:
        window = window_at(plan, position, window_bytes)
        assert window and window[0].first_byte == position
        assert [c.index for c in window] == list(range(window[0].index, window[-1].index + 1))
        assert len(window) == 1 or sum(c.length for c in window) <= window_bytes
        if window[-1].index + 1 < plan.total_chunk_count:  # the next chunk would not have fit
            nxt = plan.chunks[window[-1].index + 1]
            assert sum(c.length for c in window) + nxt.length > window_bytes
        seen += [c.index for c in window]
        position = window[-1].last_byte + 1
    assert seen == list(range(plan.total_chunk_count))
    assert window_at(plan, plan.video_size, window_bytes) == ()


@given(size=st.integers(min_value=10 * MIB, max_value=FOUR_GIB), window_bytes=budgets)
def test_a_budget_of_at_most_one_chunk_is_one_chunk_per_window(
    size: int, window_bytes: int
) -> None:
    """window_bytes <= chunk size: the one-task-per-chunk design, so both can be measured."""
    plan = plan_tiktok_upload(size, 10_000_000)
    budget = min(window_bytes, plan.chunk_size)
    for chunk in plan.chunks[:50]:
        assert window_at(plan, chunk.first_byte, budget) == (chunk,)


@given(offset=st.integers(min_value=0, max_value=50_000_122))
def test_a_position_inside_a_chunk_starts_the_window_at_that_chunk(offset: int) -> None:
    """TikTok's uploaded_bytes off a boundary: the containing chunk starts the window."""
    plan = plan_tiktok_upload_with_chunk_size(50_000_123, 10_000_000)
    window = window_at(plan, offset, 64 * MIB)
    assert window[0].first_byte <= offset <= window[0].last_byte
    assert window[-1].index == min(window[0].index + 5, 4)  # six 10 MB chunks fit 64 MiB


@given(position=st.integers(min_value=0, max_value=50_000_123))
def test_only_a_chunk_boundary_inside_the_window_is_a_place_to_send_from(position: int) -> None:
    plan = plan_tiktok_upload_with_chunk_size(50_000_123, 10_000_000)
    window = plan.chunks[1:4]
    k = chunk_starting_at(window, position)
    if position in (10_000_000, 20_000_000, 30_000_000):
        assert k is not None and window[k].first_byte == position
    else:
        assert k is None
    assert chunk_starting_at((), position) is None
    last = plan.chunks[4:]  # the final chunk, longer than chunk_size
    assert chunk_starting_at(last, position) == (0 if position == 40_000_000 else None)
