"""Window planning: consecutive parts of the plan, each window within its byte budget."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reelflow.planning import MIB, plan_chunks
from reelflow.windows import plan_windows


@given(
    size=st.integers(0, 4096 * MIB),
    chunk=st.integers(5 * MIB, 64 * MIB),
    budget=st.integers(1, 512 * MIB),
)
def test_windows_cover_the_plan_once_in_order_within_budget(
    size: int, chunk: int, budget: int
) -> None:
    """Every part is in exactly one window, in plan order; a window exceeds the budget only
    when it is one part bigger than the budget; the same inputs give the same windows."""
    plan = plan_chunks(size, chunk)
    windows = plan_windows(plan, budget)
    assert tuple(c for w in windows for c in w.chunks) == plan.chunks
    assert [w.index for w in windows] == list(range(len(windows)))
    for w in windows:
        assert w.size_bytes <= budget or len(w.chunks) == 1
        assert [c.part_number for c in w.chunks] == list(range(w.first_part, w.last_part + 1))
    # Greedy: a window could not have taken the next window's first part.
    for a, b in zip(windows, windows[1:], strict=False):
        assert a.size_bytes + b.chunks[0].length > budget
    assert plan_windows(plan, budget) == windows


def test_a_budget_at_or_below_the_chunk_size_is_one_part_per_window() -> None:
    """The per-part task unit is the window design at its smallest budget."""
    plan = plan_chunks(100 * MIB, 8 * MIB)
    for budget in (1, 8 * MIB):
        assert [len(w.chunks) for w in plan_windows(plan, budget)] == [1] * plan.count
    assert [len(w.chunks) for w in plan_windows(plan, 64 * MIB)] == [8, 5]


def test_a_budget_below_one_byte_is_refused() -> None:
    """Zero or negative budgets are a caller's bug, not one window per part."""
    with pytest.raises(ValueError, match="window_bytes"):
        plan_windows(plan_chunks(10 * MIB, 5 * MIB), 0)
