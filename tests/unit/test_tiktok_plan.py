"""Properties of the pure TikTok chunk planner (reelflow.tiktok.plan)."""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from reelflow.errors import InputRejectedError, IntegrityCheckError
from reelflow.tiktok.plan import (
    MAX_CHUNK_BYTES,
    MAX_CHUNK_COUNT,
    MAX_FINAL_CHUNK_BYTES,
    MAX_VIDEO_BYTES,
    MIN_CHUNK_BYTES,
    ContentRange,
    PlannedChunk,
    TikTokUploadPlan,
    check_tiktok_chunk_rules,
    content_range,
    first_unacknowledged_chunk,
    parse_content_range,
    plan_tiktok_upload,
    plan_tiktok_upload_with_chunk_size,
)

# The numbers are restated here on purpose: the tests must fail if the module's constants drift.
FIVE_MIB = 5_242_880
SIXTY_FOUR_MB = 64_000_000
ONE_HUNDRED_TWENTY_EIGHT_MB = 128_000_000
FOUR_GIB = 4_294_967_296

BOUNDARY_SIZES = [
    1,
    2,
    FIVE_MIB - 1,
    FIVE_MIB,
    FIVE_MIB + 1,
    10_000_000,
    19_999_999,
    20_000_000,
    SIXTY_FOUR_MB - 1,
    SIXTY_FOUR_MB,
    SIXTY_FOUR_MB + 1,
    2 * SIXTY_FOUR_MB - 1,
    2 * SIXTY_FOUR_MB,
    ONE_HUNDRED_TWENTY_EIGHT_MB + 1,
    158_008_374,  # the file TikTok rejected as one chunk (AutoPromote support doc)
    FOUR_GIB - 1,
    FOUR_GIB,
]

sizes = st.integers(min_value=1, max_value=FOUR_GIB)
preferences = st.one_of(
    st.integers(min_value=1, max_value=200_000_000),
    st.sampled_from([FIVE_MIB, 8 * 1024 * 1024, 10_000_000, SIXTY_FOUR_MB, 2**40]),
)


def assert_obeys_rules(plan: TikTokUploadPlan, size: int) -> None:
    """Check every safe-size rule independently of the module's own checker."""
    assert plan.video_size == size
    n = plan.total_chunk_count
    assert 1 <= n <= 1000
    assert n == size // plan.chunk_size
    assert len(plan.chunks) == n
    if size < FIVE_MIB:
        assert plan.chunk_size == size
        assert n == 1
    else:
        assert FIVE_MIB <= plan.chunk_size <= SIXTY_FOUR_MB
    if n == 1:
        assert plan.chunk_size == size
    if size > SIXTY_FOUR_MB:
        assert n >= 2
    final = plan.chunks[-1]
    assert final.length == size - (n - 1) * plan.chunk_size
    assert plan.chunk_size <= final.length < 2 * plan.chunk_size
    assert final.length <= ONE_HUNDRED_TWENTY_EIGHT_MB


def assert_covers_every_byte_once(plan: TikTokUploadPlan) -> None:
    expected_first = 0
    for i, chunk in enumerate(plan.chunks):
        assert chunk.index == i
        assert chunk.first_byte == expected_first
        assert chunk.length == chunk.last_byte - chunk.first_byte + 1 > 0
        if i < len(plan.chunks) - 1:
            assert chunk.length == plan.chunk_size
        expected_first = chunk.last_byte + 1
    assert expected_first == plan.video_size
    assert sum(c.length for c in plan.chunks) == plan.video_size


def test_constants_are_the_safe_sizes() -> None:
    """The module's limits are the addendum's safe sizes, not the looser documented ones."""
    assert MIN_CHUNK_BYTES == FIVE_MIB
    assert MAX_CHUNK_BYTES == SIXTY_FOUR_MB
    assert MAX_FINAL_CHUNK_BYTES == ONE_HUNDRED_TWENTY_EIGHT_MB
    assert MAX_CHUNK_COUNT == 1000
    assert MAX_VIDEO_BYTES == FOUR_GIB


@settings(max_examples=500)
@given(size=sizes, preferred=preferences)
@example(size=1, preferred=10_000_000)
@example(size=FOUR_GIB, preferred=FIVE_MIB)
@example(size=FOUR_GIB, preferred=1)
@example(size=2 * SIXTY_FOUR_MB - 1, preferred=SIXTY_FOUR_MB)
@example(size=SIXTY_FOUR_MB + 1, preferred=2**40)
def test_any_size_gets_a_plan_that_obeys_the_rules(size: int, preferred: int) -> None:
    """Every size from 1 B to 4 GiB, with any preference, yields a plan obeying every rule."""
    plan = plan_tiktok_upload(size, preferred)
    assert_obeys_rules(plan, size)
    assert_covers_every_byte_once(plan)
    check_tiktok_chunk_rules(plan.video_size, plan.chunk_size, plan.total_chunk_count)


@pytest.mark.parametrize("size", BOUNDARY_SIZES)
def test_boundary_sizes_with_the_default_preference(size: int) -> None:
    """Sizes at each threshold plan correctly with the default 10 MB preference."""
    plan = plan_tiktok_upload(size)
    assert_obeys_rules(plan, size)
    assert_covers_every_byte_once(plan)


@given(size=st.integers(min_value=FIVE_MIB, max_value=FOUR_GIB), preferred=preferences)
def test_preference_is_kept_when_it_is_safe(size: int, preferred: int) -> None:
    """A safe preference that yields >= 2 chunks is used unchanged."""
    if FIVE_MIB <= preferred <= SIXTY_FOUR_MB and size // preferred >= 2:
        assert plan_tiktok_upload(size, preferred).chunk_size == preferred


@given(size=st.integers(min_value=1, max_value=SIXTY_FOUR_MB))
def test_small_files_up_to_64mb_go_whole_when_the_preference_is_larger(size: int) -> None:
    """A file no larger than the preferred chunk is one PUT with chunk_size == video_size."""
    plan = plan_tiktok_upload(size, SIXTY_FOUR_MB)
    assert plan.total_chunk_count == 1
    assert plan.chunk_size == size
    assert plan.chunks == (PlannedChunk(0, 0, size - 1, size),)


def test_single_chunk_never_claims_a_smaller_chunk_size() -> None:
    """15 MB with a 10 MB preference is one whole chunk, not chunk_size=10 MB with count 1."""
    plan = plan_tiktok_upload(15_000_000, 10_000_000)
    assert (plan.chunk_size, plan.total_chunk_count) == (15_000_000, 1)


def test_file_over_64mb_that_would_be_one_chunk_is_halved() -> None:
    """100 MB with a 64 MB preference is split in two instead of one 100 MB PUT."""
    plan = plan_tiktok_upload(100_000_001, SIXTY_FOUR_MB)
    assert plan.chunk_size == 50_000_000
    assert [c.length for c in plan.chunks] == [50_000_000, 50_000_001]


def test_official_example_with_explicit_chunk_size() -> None:
    """TikTok's worked example: 50,000,123 B in 10,000,000-B chunks is 5 chunks, last 10,000,123."""
    plan = plan_tiktok_upload_with_chunk_size(50_000_123, 10_000_000)
    assert plan.total_chunk_count == 5
    assert plan.chunks[-1] == PlannedChunk(4, 40_000_000, 50_000_122, 10_000_123)
    assert [content_range(c, plan.video_size) for c in plan.chunks] == [
        "bytes 0-9999999/50000123",
        "bytes 10000000-19999999/50000123",
        "bytes 20000000-29999999/50000123",
        "bytes 30000000-39999999/50000123",
        "bytes 40000000-50000122/50000123",
    ]
    assert plan.source_info() == {
        "source": "FILE_UPLOAD",
        "video_size": 50_000_123,
        "chunk_size": 10_000_000,
        "total_chunk_count": 5,
    }


def test_official_whole_upload_example() -> None:
    """TikTok's whole-upload example: 4,194,304 B is one chunk, 'bytes 0-4194303/4194304'."""
    plan = plan_tiktok_upload(4_194_304)
    assert (plan.chunk_size, plan.total_chunk_count) == (4_194_304, 1)
    assert content_range(plan.chunks[0], 4_194_304) == "bytes 0-4194303/4194304"


@given(
    size=st.integers(min_value=FIVE_MIB, max_value=FOUR_GIB),
    chunk=st.integers(min_value=FIVE_MIB, max_value=SIXTY_FOUR_MB),
)
def test_explicit_chunk_size_is_accepted_exactly_when_safe(size: int, chunk: int) -> None:
    """The explicit variant never adjusts: it plans with that chunk or raises InputRejectedError."""
    n = size // chunk
    safe = (
        1 <= n <= 1000
        and (n >= 2 or chunk == size)
        and size - (n - 1) * chunk <= ONE_HUNDRED_TWENTY_EIGHT_MB
    )
    if safe:
        plan = plan_tiktok_upload_with_chunk_size(size, chunk)
        assert plan.chunk_size == chunk
        assert_obeys_rules(plan, size)
        assert_covers_every_byte_once(plan)
    else:
        with pytest.raises(InputRejectedError):
            plan_tiktok_upload_with_chunk_size(size, chunk)


@pytest.mark.parametrize(
    ("size", "chunk"),
    [
        (4_194_304, 1_048_576),  # under 5 MiB must be whole
        (4_194_304, 5_242_880),  # chunk_size > video_size for a small file
        (50_000_123, 5_000_000),  # decimal "5 MB" is below the safe minimum
        (200_000_000, 67_108_864),  # binary "64 MB" is above the safe maximum
        (158_008_374, 158_008_374),  # one chunk over 64 MB (rejected by TikTok in the wild)
        (50_000_123, 0),
    ],
)
def test_explicit_chunk_size_rejects_unsafe_plans(size: int, chunk: int) -> None:
    """Chunk sizes TikTok rejects (or might reject) raise InputRejectedError, not a bad init."""
    with pytest.raises(InputRejectedError) as info:
        plan_tiktok_upload_with_chunk_size(size, chunk)
    assert info.value.reason == "invalid_chunk_plan"


@pytest.mark.parametrize("size", [0, -1, FOUR_GIB + 1, 10 * FOUR_GIB])
def test_sizes_outside_range_are_validation_errors(size: int) -> None:
    """Empty and over-4-GiB files are rejected before any request is made."""
    with pytest.raises(InputRejectedError) as info:
        plan_tiktok_upload(size)
    assert info.value.reason == "video_size_out_of_range"
    assert not info.value.retryable


def test_nonpositive_preference_is_rejected() -> None:
    """A zero or negative preferred chunk is a caller bug, reported as InputRejectedError."""
    with pytest.raises(InputRejectedError):
        plan_tiktok_upload(10_000_000, 0)


@pytest.mark.parametrize(
    ("size", "chunk", "count"),
    [
        (50_000_123, 10_000_000, 6),  # ceil instead of floor
        (50_000_123, 10_000_000, 4),
        (4_000_000, 4_000_000, 2),
        (20_000_000, 10_000_000, 1),
        (15_000_000, 10_000_000, 1),  # floor is 1, but a lone chunk must be the whole file
    ],
)
def test_checker_rejects_wrong_counts(size: int, chunk: int, count: int) -> None:
    """The init triple is rejected unless count == floor(size / chunk) and a lone chunk is whole."""
    with pytest.raises(InputRejectedError):
        check_tiktok_chunk_rules(size, chunk, count)


def test_plan_is_immutable() -> None:
    """Plans are frozen values; a resumed run cannot mutate one in place."""
    plan = plan_tiktok_upload(20_000_000)
    with pytest.raises(AttributeError):
        plan.chunk_size = 1  # type: ignore[misc]


@given(size=sizes, preferred=preferences, data=st.data())
def test_resume_point_is_the_chunk_holding_the_next_needed_byte(
    size: int, preferred: int, data: st.DataObject
) -> None:
    """first_unacknowledged_chunk resumes at the chunk containing offset uploaded_bytes."""
    plan = plan_tiktok_upload(size, preferred)
    uploaded = data.draw(st.integers(min_value=0, max_value=size))
    index = first_unacknowledged_chunk(plan, uploaded)
    if uploaded == size:
        assert index == plan.total_chunk_count
    else:
        chunk = plan.chunks[index]
        assert chunk.first_byte <= uploaded <= chunk.last_byte


@given(size=st.integers(min_value=FIVE_MIB, max_value=FOUR_GIB), preferred=preferences)
def test_resume_on_chunk_boundaries(size: int, preferred: int) -> None:
    """After k whole chunks are acknowledged, the next chunk to send is k."""
    plan = plan_tiktok_upload(size, preferred)
    for chunk in plan.chunks:
        assert first_unacknowledged_chunk(plan, chunk.first_byte) == chunk.index
        assert first_unacknowledged_chunk(plan, chunk.last_byte + 1) == chunk.index + 1


def test_resume_inside_a_chunk_restarts_that_chunk() -> None:
    """A count in the middle of a chunk (never expected) resumes from that chunk's first byte."""
    plan = plan_tiktok_upload_with_chunk_size(50_000_123, 10_000_000)
    assert first_unacknowledged_chunk(plan, 10_000_001) == 1
    assert first_unacknowledged_chunk(plan, 50_000_000) == 4  # inside the longer final chunk
    assert first_unacknowledged_chunk(plan, 50_000_123) == 5


@pytest.mark.parametrize("uploaded", [-1, 50_000_124])
def test_resume_rejects_counts_the_plan_cannot_hold(uploaded: int) -> None:
    """A reported count outside 0..video_size means the remote and the plan disagree."""
    plan = plan_tiktok_upload_with_chunk_size(50_000_123, 10_000_000)
    with pytest.raises(IntegrityCheckError):
        first_unacknowledged_chunk(plan, uploaded)


def test_chunks_unpack_as_index_first_last_length() -> None:
    """A planned chunk unpacks like the (index, first, last, length) tuple callers expect."""
    plan = plan_tiktok_upload_with_chunk_size(50_000_123, 10_000_000)
    index, first, last, length = plan.chunks[1]
    assert (index, first, last, length) == (1, 10_000_000, 19_999_999, 10_000_000)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("bytes 0-9999999/50000123", ContentRange(0, 9_999_999, 50_000_123)),
        ("Bytes 0-49/100", ContentRange(0, 49, 100)),
        ("bytes */100", ContentRange(None, None, 100)),
        ("bytes 0-9/*", ContentRange(0, 9, None)),
        ("", None),
        (None, None),
        ("items 0-9/10", None),
        ("bytes 0-/10", None),
    ],
)
def test_parse_content_range(value: str | None, expected: ContentRange | None) -> None:
    """Content-Range values TikTok may send parse; anything else is None, never an exception."""
    assert parse_content_range(value) == expected


@given(size=sizes, preferred=preferences)
def test_content_range_round_trips(size: int, preferred: int) -> None:
    """Every planned chunk's Content-Range parses back to the same range."""
    plan = plan_tiktok_upload(size, preferred)
    for chunk in (plan.chunks[0], plan.chunks[-1]):
        assert parse_content_range(content_range(chunk, size)) == ContentRange(
            chunk.first_byte, chunk.last_byte, size
        )
