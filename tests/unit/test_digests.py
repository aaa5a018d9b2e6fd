"""The whole-file digests: one read gives S3's CRC64NVME and the content SHA-256, however the
file is cut into reads."""

from __future__ import annotations

import base64
import hashlib
import struct

from awscrt import checksums
from hypothesis import given
from hypothesis import strategies as st

from reelflow.digests import WholeDigest, crc64nvme_b64, part_crc64nvme_b64


def _crc_b64(data: bytes) -> str:
    return base64.b64encode(struct.pack(">Q", checksums.crc64nvme(data))).decode()


@given(st.binary(max_size=4096), st.lists(st.integers(min_value=0, max_value=4096), max_size=8))
def test_whole_digest_matches_one_pass_at_any_split(data: bytes, cuts: list[int]) -> None:
    """Fed in any pieces (empty ones too, any buffer type), it equals hashlib and awscrt over
    the whole bytes."""
    bounds = sorted({0, len(data), *(min(c, len(data)) for c in cuts)})
    whole = WholeDigest()
    for i, (start, end) in enumerate(zip(bounds, bounds[1:], strict=False)):
        piece = data[start:end]
        whole.update([bytes, bytearray, memoryview][i % 3](piece))
    assert whole.sha256_hex == hashlib.sha256(data).hexdigest()
    assert whole.crc64nvme_b64 == _crc_b64(data) == part_crc64nvme_b64(data)
    assert whole.size == len(data)


def test_crc_is_spelled_as_s3_spells_it() -> None:
    """Base64 of 8 big-endian bytes: the empty input's CRC is zero, a known vector decodes."""
    assert crc64nvme_b64(0) == "AAAAAAAAAAA="
    assert WholeDigest().crc64nvme_b64 == "AAAAAAAAAAA="
    # CRC-64/NVME check value of "123456789" (the catalogue of parametrised CRC algorithms).
    assert part_crc64nvme_b64(b"123456789") == crc64nvme_b64(0xAE8B14860A799888)
