"""Uploads at a video's final key: S3's full-object CRC64NVME is the end-to-end check (moto's
server over HTTP), and the object says whether it is stored yet (its tags)."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from typing import Any

import pytest

from reelflow.digests import WholeDigest
from reelflow.errors import IntegrityCheckError
from reelflow.planning import MIB, plan_chunks, upload_key
from storage.base import ObjectStore, PartReceipt
from storage.local import LocalStore
from storage.s3 import S3Store, make_s3_client

KEY = upload_key("u_0123456789abcdef01234567", "mp4")
DATA = bytes(range(256)) * (11 * MIB // 256) + b"tail"


def _send(store: ObjectStore, data: bytes) -> tuple[str, list[PartReceipt], WholeDigest]:
    uid = store.create_upload(KEY, "video/mp4")
    whole = WholeDigest()
    receipts = []
    for chunk in plan_chunks(len(data), 5 * MIB).chunks:
        body = data[chunk.offset : chunk.end]
        whole.update(body)
        sha = base64.b64encode(hashlib.sha256(body).digest()).decode()
        receipts.append(store.upload_part(KEY, uid, chunk, body, sha))
    return uid, receipts, whole


@pytest.fixture
def s3(s3_server: Any, bucket: str) -> S3Store:
    return S3Store(f"s3://{bucket}/pfx", make_s3_client(endpoint_url=s3_server.endpoint_url))


def _tags(s3: S3Store, key: str) -> dict[str, str]:
    resp = s3.client.get_object_tagging(Bucket=s3.bucket, Key=s3._key(key))
    return {t["Key"]: t["Value"] for t in resp["TagSet"]}


def test_s3_final_key_completes_against_the_whole_crc_and_stays_pending(
    s3: S3Store, s3_server: Any
) -> None:
    """Parts carry CRC64NVME; the Complete the client's whole-file CRC; the server reports it
    back as FULL_OBJECT; the object is pending until mark_stored tags it with its SHA-256."""
    s3_server.reset_stats()
    uid, receipts, whole = _send(s3, DATA)
    assert all(r.crc64nvme_b64 for r in receipts)
    assert s3.complete_upload(KEY, uid, receipts, crc64nvme_b64=whole.crc64nvme_b64) is None
    head = s3.client.head_object(Bucket=s3.bucket, Key=s3._key(KEY), ChecksumMode="ENABLED")
    assert (head["ChecksumType"], head["ChecksumCRC64NVME"]) == (
        "FULL_OBJECT",
        whole.crc64nvme_b64,
    )
    assert _tags(s3, KEY) == {"reelflow-state": "pending"}
    s3.mark_stored(KEY, whole.sha256_hex)
    assert _tags(s3, KEY) == {"reelflow-state": "stored", "sha256": whole.sha256_hex}
    assert s3.sha256_hex(KEY) == hashlib.sha256(DATA).hexdigest()
    stats = s3_server.stats()
    assert "CopyObject" not in stats and stats["PutObjectTagging"] == 1


@pytest.mark.parametrize("claimed", ["other bytes", None])
def test_s3_whole_crc_mismatch_deletes_the_object(
    s3: S3Store, s3_server: Any, claimed: str | None
) -> None:
    """A Complete whose CRC is not the stored bytes' (or that has none) leaves no object."""
    uid, receipts, _ = _send(s3, DATA)
    wrong = None
    if claimed is not None:
        other = WholeDigest()
        other.update(claimed.encode())
        wrong = other.crc64nvme_b64
    with pytest.raises(IntegrityCheckError):
        s3.complete_upload(KEY, uid, receipts, crc64nvme_b64=wrong)
    assert not s3.exists(KEY)


def test_s3_staged_keys_keep_per_part_sha256(s3: S3Store, s3_server: Any) -> None:
    """A staging/ upload (an older session) is a SHA-256 composite upload, as before."""
    key = "staging/u_x/source.mp4"
    uid = s3.create_upload(key, "video/mp4")
    body = DATA[: 5 * MIB]
    sha = base64.b64encode(hashlib.sha256(body).digest()).decode()
    receipt = s3.upload_part(key, uid, plan_chunks(len(body), 5 * MIB).chunks[0], body, sha)
    assert receipt.crc64nvme_b64 is None and receipt.sha256_b64 == sha
    s3.abort_upload(key, uid)


def test_local_final_key_is_completed_by_rename(tmp_path: Path) -> None:
    """The local store completes at the final key (fsync + rename); tags are a no-op there."""
    store = LocalStore((tmp_path / "objects").as_uri())
    uid, receipts, whole = _send(store, DATA)
    store.complete_upload(KEY, uid, receipts, crc64nvme_b64=whole.crc64nvme_b64)
    store.mark_stored(KEY, whole.sha256_hex)
    assert store.sha256_hex(KEY) == whole.sha256_hex
    assert store.list_uploads() == []
