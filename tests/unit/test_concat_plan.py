"""The pure plan of a concatenation's parts (reelflow/planning.py ``plan_concatenation``) and
the assembly's plan of a final from its ledger (tasks/assemble_received.py ``final_plan``)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reelflow.errors import IntegrityCheckError
from reelflow.planning import (
    MIB,
    S3_MAX_PART_BYTES,
    S3_MIN_PART_BYTES,
    plan_concatenation,
    source_parts,
)
from tasks.assemble_received import final_plan

PART_SIZES = st.sampled_from([5 * MIB, 8 * MIB, 16 * MIB])
SOURCES = st.lists(
    st.tuples(st.one_of(st.integers(0, 40 * MIB), st.integers(0, 6 * MIB), st.just(0)), PART_SIZES),
    min_size=1,
    max_size=8,
).filter(lambda s: sum(n for n, _ in s) > 0)


@settings(max_examples=400, deadline=None)
@given(sources=SOURCES)
def test_plan_is_the_concatenation_in_parts_s3_takes(sources: list[tuple[int, int]]) -> None:
    """The parts hold the sources' bytes in order, once each; numbered 1..n, contiguous; every
    part but the last at least 5 MiB, none over 5 GiB; a copy is one range of one source, and
    a part said to be a source's own part is exactly that part."""
    plan = plan_concatenation(sources)
    pieces = [p for part in plan for p in part.pieces]
    walked = []
    for index, (length, _) in enumerate(sources):
        if length:
            walked.append((index, 0, length))
    merged_runs: list[tuple[int, int, int]] = []
    for p in pieces:  # join adjacent pieces of one source to compare with the sources whole
        if merged_runs and merged_runs[-1][0] == p.source:
            s, o, n = merged_runs[-1]
            assert o + n == p.offset
            merged_runs[-1] = (s, o, n + p.length)
        else:
            merged_runs.append((p.source, p.offset, p.length))
    assert merged_runs == walked
    at = 0
    for n, part in enumerate(plan, start=1):
        assert part.chunk.part_number == n and part.chunk.offset == at
        assert part.chunk.length == sum(p.length for p in part.pieces) > 0
        assert part.chunk.length <= S3_MAX_PART_BYTES
        if n < len(plan):
            assert part.chunk.length >= S3_MIN_PART_BYTES
        if part.copy:
            assert len(part.pieces) == 1
        if part.source_part is not None:
            (piece,) = part.pieces
            length, part_size = sources[piece.source]
            own = source_parts(length, part_size)[part.source_part - 1]
            assert (own.offset, own.length) == (piece.offset, piece.length)
        at += part.chunk.length
    assert at == sum(n for n, _ in sources)


@settings(max_examples=400, deadline=None)
@given(sources=SOURCES)
def test_only_sources_too_small_for_a_part_go_through_memory(
    sources: list[tuple[int, int]],
) -> None:
    """Nothing is merged when every source but the last is empty or at least 5 MiB; otherwise
    a merge is below 5 MiB plus one source part, and what is merged in all is bounded by the
    small sources plus, after each, one part and the short tail joined to it, plus the last
    source (hypothesis found [(1, 5 MiB), (5 MiB + 1, 5 MiB), (1, 5 MiB)]: the middle
    source's part and its 1-byte tail are one joined range merged behind the first)."""
    plan = plan_concatenation(sources)
    nonempty = [(n, ps) for n, ps in sources if n]
    small = [(n, ps) for n, ps in nonempty[:-1] if n < S3_MIN_PART_BYTES]
    merged = sum(p.merged_bytes for p in plan)
    if not small:
        assert merged == 0
    biggest_part = max(ps for _, ps in sources)
    for part in plan:
        if not part.copy:
            assert part.chunk.length < S3_MIN_PART_BYTES + biggest_part
    last = nonempty[-1][0] if nonempty else 0
    assert merged <= sum(n + biggest_part + S3_MIN_PART_BYTES for n, _ in small) + last


def test_parallel_uploads_halves_are_copied_whole() -> None:
    """tus-js-client's two halves of 12 MiB: each half's short last part is joined to the one
    before it (one range to copy and hash), the second half's last part ends the file."""
    plan = plan_concatenation([(6 * MIB + 5, 5 * MIB), (6 * MIB + 7, 5 * MIB)])
    shape = [
        (p.copy, p.source_part, [(x.source, x.offset, x.length) for x in p.pieces]) for p in plan
    ]
    assert shape == [
        (True, None, [(0, 0, 6 * MIB + 5)]),
        (True, 1, [(1, 0, 5 * MIB)]),
        (True, 2, [(1, 5 * MIB, MIB + 7)]),
    ]


def test_final_plan_is_its_ledger_numbered_and_whole() -> None:
    """A final's plan is its ledger's parts in order; a gap or a wrong total is refused."""
    plan = final_plan(13, 5, {1: 7, 2: 6})
    assert [(c.part_number, c.offset, c.length) for c in plan.chunks] == [(1, 0, 7), (2, 7, 6)]
    with pytest.raises(IntegrityCheckError):
        final_plan(13, 5, {1: 7, 3: 6})
    with pytest.raises(IntegrityCheckError):
        final_plan(14, 5, {1: 7, 2: 6})
    with pytest.raises(IntegrityCheckError):
        final_plan(0, 5, {})
