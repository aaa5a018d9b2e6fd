"""The S3 test server's chaos extras: seeded rate faults, arrival byte counts, a slow link."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from botocore.config import Config

from tests.support.s3server import S3Control, S3TestServer


@pytest.fixture
def s3() -> Iterator[S3TestServer]:
    with S3TestServer() as server:
        yield server


def _faulted_puts(s3: S3TestServer, bucket: str, n: int) -> list[bool]:
    """PUT ``n`` objects (botocore retries what fails); which PutObject requests were faulted."""
    s3.reset_stats()
    c = s3.client(config=Config(retries={"max_attempts": 10, "mode": "standard"}))
    for i in range(n):
        c.put_object(Bucket=bucket, Key=f"k{i}", Body=b"x")
    return [r.fault is not None for r in s3.requests() if r.op == "PutObject"]


def test_rate_rule_fails_a_seeded_fraction_of_any_operation(s3: S3TestServer) -> None:
    """op "*" with rate 0.3 fails about 30 % of requests, the same ones for the same seed."""
    s3.client().create_bucket(Bucket="rate-bucket")
    rule = {"op": "*", "kind": "500", "rate": 0.3, "times": 1000}
    s3.set_faults([rule], seed=5)
    first = _faulted_puts(s3, "rate-bucket", 60)
    s3.set_faults([rule], seed=5)
    assert _faulted_puts(s3, "rate-bucket", 60) == first
    assert 0.15 <= sum(first) / len(first) <= 0.45
    assert s3.faults()[0]["fired"] == sum(first)


def test_bytes_in_counts_body_bytes_per_bucket_and_operation(s3: S3TestServer) -> None:
    """PutObject bodies are counted on arrival, per bucket, also over the control plane."""
    c = s3.client()
    for name in ("bytes-a", "bytes-b"):
        c.create_bucket(Bucket=name)
    c.put_object(Bucket="bytes-a", Key="k", Body=b"x" * 1000)
    c.put_object(Bucket="bytes-b", Key="k", Body=b"x" * 10)
    assert s3.bytes_in("bytes-a")["PutObject"] == 1000
    assert S3Control(s3.endpoint_url).bytes_in("bytes-b")["PutObject"] == 10
    assert s3.bytes_in()["PutObject"] == 1010


def test_rate_must_be_a_fraction() -> None:
    """A rate outside (0, 1] is refused when the rule is made."""
    with pytest.raises(ValueError, match="rate"):
        S3TestServer().set_faults([{"op": "*", "kind": "500", "rate": 1.5}])
