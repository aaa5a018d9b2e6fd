"""Property tests for the pure S3 chunk planner and resume reconciliation."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given
from hypothesis import strategies as st

from reelflow.planning import (
    MIB,
    S3_MAX_PART_BYTES,
    S3_MAX_PARTS,
    S3_MIN_PART_BYTES,
    check_parts_against_plan,
    composite_sha256,
    plan_chunks,
    reconcile_parts,
)

sizes = st.integers(min_value=0, max_value=4 * 1024 * MIB)
requests_ = st.integers(min_value=1, max_value=6 * 1024 * MIB)


@given(size=sizes, requested=requests_)
def test_chunks_cover_every_byte_exactly_once(size: int, requested: int) -> None:
    """Chunks are contiguous, in order, 1-based, and add up to the file size."""
    plan = plan_chunks(size, requested)
    pos = 0
    for i, chunk in enumerate(plan.chunks, start=1):
        assert chunk.part_number == i
        assert chunk.offset == pos
        pos += chunk.length
    assert pos == size


@given(size=sizes, requested=requests_)
def test_plans_respect_s3_limits(size: int, requested: int) -> None:
    """Parts ≥ 5 MiB except the last, ≤ 5 GiB each, ≤ 10 000 parts."""
    plan = plan_chunks(size, requested)
    assert 1 <= plan.count <= S3_MAX_PARTS
    for chunk in plan.chunks[:-1]:
        assert S3_MIN_PART_BYTES <= chunk.length <= S3_MAX_PART_BYTES
    assert plan.chunks[-1].length <= S3_MAX_PART_BYTES


@given(size=st.integers(min_value=S3_MIN_PART_BYTES * S3_MAX_PARTS + 1, max_value=5 * 1024**4))
def test_chunk_size_grows_when_the_file_needs_more_than_10000_parts(size: int) -> None:
    """A 5 MiB request on a file > 50 000 MiB grows the chunk so the count stays ≤ 10 000."""
    plan = plan_chunks(size, S3_MIN_PART_BYTES)
    assert plan.chunk_size > S3_MIN_PART_BYTES
    assert plan.count <= S3_MAX_PARTS
    assert plan.chunks[-1].end == size


@given(size=sizes, requested=requests_)
def test_same_request_gives_same_plan(size: int, requested: int) -> None:
    """Resume depends on a re-run cutting the file exactly as before."""
    assert plan_chunks(size, requested) == plan_chunks(size, requested)


@dataclass
class P:
    part_number: int
    size: int
    etag: str
    sha256_b64: str | None = None
    crc64nvme_b64: str | None = None


def test_reconcile_trusts_the_store_over_the_ledger() -> None:
    """Ledger-only parts are forgotten; store-only parts are adopted; wrong sizes are not confirmed."""
    plan = plan_chunks(20 * MIB, 5 * MIB)
    ledger = {1: P(1, 5 * MIB, "a"), 2: P(2, 5 * MIB, "b"), 3: P(3, 5 * MIB, "c")}
    remote = {
        1: P(1, 5 * MIB, "a"),
        3: P(3, 5 * MIB, "other"),
        4: P(4, 5 * MIB, "d"),
        2: P(2, 1, "b"),
    }
    rec = reconcile_parts(plan, ledger, remote)
    assert set(rec.confirmed) == {1, 3, 4}
    assert rec.forget == {2, 3}
    assert rec.adopted == {4}


def test_check_parts_reports_count_size_and_checksum_problems() -> None:
    """Assembly refuses missing parts, wrong sizes and checksums that differ from the source."""
    plan = plan_chunks(12 * MIB, 5 * MIB)
    digests = {1: "x", 2: "y", 3: "z"}
    good = {1: P(1, 5 * MIB, "e", "x"), 2: P(2, 5 * MIB, "e", "y"), 3: P(3, 2 * MIB, "e", "z")}
    assert check_parts_against_plan(plan, good, digests) == []
    bad = {1: P(1, 5 * MIB, "e", "x"), 2: P(2, 4 * MIB, "e", "WRONG")}
    problems = " ".join(check_parts_against_plan(plan, bad, digests))
    assert "missing [3]" in problems and "part 2: 4194304 bytes" in problems
    assert "part 2: checksum" in problems


def test_check_parts_catches_a_replaced_part_by_etag() -> None:
    """A part whose ETag differs from the acknowledged one was replaced, checksum or not."""
    plan = plan_chunks(6 * MIB, 5 * MIB)
    remote = {1: P(1, 5 * MIB, "e1"), 2: P(2, MIB, "other")}
    ledger = {1: P(1, 5 * MIB, "e1"), 2: P(2, MIB, "e2")}
    problems = check_parts_against_plan(plan, remote, {1: "x", 2: "y"}, ledger)
    assert problems == ["part 2: ETag differs from the one acknowledged to this upload"]


def test_composite_checksum_matches_s3_definition() -> None:
    """base64(sha256(d1 || d2)) + '-2', as S3 reports for a two-part SHA-256 upload."""
    import base64
    import hashlib

    d1, d2 = hashlib.sha256(b"a").digest(), hashlib.sha256(b"b").digest()
    expected = base64.b64encode(hashlib.sha256(d1 + d2).digest()).decode() + "-2"
    assert composite_sha256([d1, d2]) == expected
