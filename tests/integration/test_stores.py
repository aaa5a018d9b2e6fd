"""Both object stores behind one protocol: the local filesystem and S3 (moto's server over HTTP)."""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from reelflow.errors import IntegrityCheckError, UploadNotFoundError
from reelflow.planning import MIB, composite_sha256, plan_chunks
from storage.base import ObjectStore
from storage.local import LocalStore
from storage.s3 import S3Store, make_s3_client


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ObjectStore]:
    if request.param == "local":
        yield LocalStore((tmp_path / "objects").as_uri())
    else:
        server = request.getfixturevalue("s3_server")
        bucket = request.getfixturevalue("bucket")
        yield S3Store(f"s3://{bucket}/pfx", make_s3_client(endpoint_url=server.endpoint_url))


def sha_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def test_multipart_roundtrip_out_of_order(store: ObjectStore) -> None:
    """Parts sent in any order assemble into the exact source bytes at the key."""
    data = bytes(range(256)) * (12 * MIB // 256) + b"tail"
    plan = plan_chunks(len(data), 5 * MIB)
    uid = store.create_upload("staging/x/source.mp4", "video/mp4")
    receipts = {}
    for chunk in reversed(plan.chunks):
        body = data[chunk.offset : chunk.end]
        receipts[chunk.part_number] = store.upload_part(
            "staging/x/source.mp4", uid, chunk, body, sha_b64(body)
        )
    listed = store.list_parts("staging/x/source.mp4", uid)
    assert sorted(listed) == [1, 2, 3]
    assert all(listed[n].size == c.length for n, c in enumerate(plan.chunks, 1))
    assert [p.upload_id for p in store.list_uploads("staging/")] == [uid]
    composite = store.complete_upload(
        "staging/x/source.mp4", uid, [listed[n] for n in sorted(listed)]
    )
    if composite:
        digests = [hashlib.sha256(data[c.offset : c.end]).digest() for c in plan.chunks]
        assert composite.split("-")[0] == composite_sha256(digests).split("-")[0]
    assert store.sha256_hex("staging/x/source.mp4") == hashlib.sha256(data).hexdigest()
    assert store.list_uploads("staging/") == []
    store.move("staging/x/source.mp4", "videos/abc.mp4")
    assert not store.exists("staging/x/source.mp4")
    assert store.size("videos/abc.mp4") == len(data)
    assert store.read_range("videos/abc.mp4", 5, 10) == data[5:15]


def test_wrong_part_checksum_is_refused(store: ObjectStore) -> None:
    """A part whose bytes do not match the declared SHA-256 is refused at the wire."""
    uid = store.create_upload("k.mp4", "video/mp4")
    chunk = plan_chunks(10, 5 * MIB).chunks[0]
    with pytest.raises(IntegrityCheckError):
        store.upload_part("k.mp4", uid, chunk, b"0123456789", sha_b64(b"different"))
    store.abort_upload("k.mp4", uid)


def test_abort_leaves_nothing(store: ObjectStore) -> None:
    """After abort the upload is gone: list_parts raises, nothing pending, no object."""
    uid = store.create_upload("k2.mp4", "video/mp4")
    chunk = plan_chunks(10, 5 * MIB).chunks[0]
    store.upload_part("k2.mp4", uid, chunk, b"0123456789", sha_b64(b"0123456789"))
    store.abort_upload("k2.mp4", uid)
    with pytest.raises(UploadNotFoundError):
        store.list_parts("k2.mp4", uid)
    assert store.list_uploads() == []
    assert not store.exists("k2.mp4")


def test_s3_read_url_lives_as_long_as_presign_ttl(s3_server: object, bucket: str) -> None:
    """REELFLOW_PRESIGN_TTL_S reaches the S3 store: its read URLs expire when the setting says."""
    from urllib.parse import parse_qs, urlparse

    from reelflow.settings import Settings
    from storage.runtime import open_store

    client = make_s3_client(endpoint_url=s3_server.endpoint_url)  # type: ignore[attr-defined]
    ttl = Settings(presign_ttl_s=900).presign_ttl_s
    store = open_store(f"s3://{bucket}/pfx", s3_client=client, presign_ttl_s=ttl)
    store.put_bytes("k/one.bin", b"x", "application/octet-stream")
    query = parse_qs(urlparse(store.read_url("k/one.bin")).query)
    if "X-Amz-Expires" in query:  # SigV4: the lifetime itself
        assert query["X-Amz-Expires"] == ["900"]
    else:  # SigV2 (what botocore signs for this endpoint): the moment it expires
        left = int(query["Expires"][0]) - time.time()
        assert 900 - 60 < left <= 900, left
