"""A concatenation's final assembled by the store (storage/tus_concat.py, via the gateway's
deployments/gateway/concat.py): no partial byte uploaded twice, the ledger and SHA-256 right.

On moto's S3 server over HTTP and on the local store, with the catalog on SQLite and on
PostgreSQL. The bytes a final's assembly sends are counted twice on S3 (a store wrapper and
moto's own count of request bodies per operation) and by the wrapper on the local store; the
parts the store copied are counted the same way. Partials are written by the real writer from
random bytes, as a PATCH writes them.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import os
import secrets
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from deployments.gateway import concat
from reelflow.errors import InputRejectedError
from reelflow.planning import MIB, Chunk, plan_concatenation
from reelflow.rules import sniff_container
from storage import gateway_uploads as uploads
from storage.base import ObjectStore, PartReceipt
from storage.catalog import Catalog
from storage.clock import utcnow
from storage.gateway_uploads import GatewayUpload
from storage.local import LocalStore
from storage.s3 import S3Store, make_s3_client
from storage.tus_writer import TusWriter

PART = 5 * MIB
MP4_HEAD = b"\x00\x00\x00\x20ftypisom\x00\x00\x02\x00isomiso2avc1mp41"


class Killed(BaseException):
    """The process died here (nothing in the writer may handle it)."""


class CountingStore:
    """The real store, counting the bytes sent to it (``upload_part``, ``put_bytes``) and the
    bytes it copied itself (``copy_part``); optionally dying after the n-th copy."""

    def __init__(self, inner: ObjectStore, *, die_after_copies: int | None = None) -> None:
        self.inner = inner
        self.url = inner.url
        self.sent: Counter[str] = Counter()
        self.copied = 0
        self.copies = 0
        self.die_after_copies = die_after_copies

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def upload_part(
        self, key: str, upload_id: str, chunk: Chunk, data: bytes | bytearray, sha256_b64: str
    ) -> PartReceipt:
        self.sent["upload_part"] += len(data)
        return self.inner.upload_part(key, upload_id, chunk, data, sha256_b64)

    def put_bytes(self, key: str, data: bytes, content_type: str) -> None:
        self.sent["put_bytes"] += len(data)
        self.inner.put_bytes(key, data, content_type)

    def copy_part(
        self, key: str, upload_id: str, chunk: Chunk, src_key: str, src_offset: int
    ) -> PartReceipt:
        receipt = self.inner.copy_part(key, upload_id, chunk, src_key, src_offset)
        self.copied += chunk.length
        self.copies += 1
        if self.die_after_copies is not None and self.copies >= self.die_after_copies:
            raise Killed
        return receipt


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "local":
        return LocalStore((tmp_path / "objects").as_uri())
    server = request.getfixturevalue("s3_server")
    bucket = request.getfixturevalue("bucket")
    return S3Store(f"s3://{bucket}/media", make_s3_client(endpoint_url=server.endpoint_url))


@functools.cache
def random_bytes(n: int) -> bytes:
    return os.urandom(n)


def source_of(sizes: list[int]) -> bytes:
    """A file of ``sum(sizes)`` random bytes starting like an MP4."""
    data = random_bytes(sum(sizes))
    return MP4_HEAD + data[len(MP4_HEAD) :]


def new_row(writer: TusWriter, length: int | None, kind: str, owner: str) -> GatewayUpload:
    return writer.create(
        GatewayUpload(
            id=secrets.token_urlsafe(18),
            owner=owner,
            length=length,
            kind=kind,
            metadata_json=json.dumps({"filename": "clip.mp4", "filetype": "video/mp4"}),
            expires_at=utcnow() + timedelta(days=1),
        )
    )


def partials_of(writer: TusWriter, data: bytes, sizes: list[int]) -> list[GatewayUpload]:
    """One received partial per size, written in 3 MiB PATCH bodies (so tails happen)."""
    out, at = [], 0
    for size in sizes:
        row = new_row(writer, size, "partial", "alice")
        piece = data[at : at + size]
        bodies = [piece[i : i + 3 * MIB] for i in range(0, size, 3 * MIB)]
        for body in bodies:
            row = writer.append(row, [body]).row
        assert row.state == uploads.RECEIVED
        out.append(row)
        at += size
    return out


@pytest.fixture
def moto_bytes(request: pytest.FixtureRequest, store: ObjectStore) -> Callable[[], Counter[str]]:
    """moto's own count of request body bytes per S3 operation in the store's bucket (always
    empty on the local store)."""
    if not isinstance(store, S3Store):
        return Counter
    server = request.getfixturevalue("s3_server")
    bucket = store.bucket
    return lambda: Counter(server.bytes_in(bucket))


def b64sha(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def complete(writer: TusWriter, row: GatewayUpload) -> str:
    """Complete the final with its ledger's parts (checked against the store's list) and hash
    what the store assembled."""
    assert row.upload_id is not None
    ledger = writer.catalog.ledger_parts(row.upload_id)
    listed = writer.store.list_parts(row.staging_key, row.upload_id)
    assert sorted(ledger) == sorted(listed) == list(range(1, len(ledger) + 1))
    for n, part in ledger.items():
        assert part.size == listed[n].size and part.etag == listed[n].etag
    writer.store.complete_upload(
        row.staging_key, row.upload_id, [ledger[n] for n in sorted(ledger)]
    )
    return writer.store.sha256_hex(row.staging_key)


LAYOUTS = {
    # tus-js-client's parallelUploads: 2 near-equal halves, each ending in a short part
    "halves": [6 * MIB + 4321, 6 * MIB + 999],
    # every partial at least a part, short last parts both above and below 5 MiB
    "mixed": [12 * MIB + 1, 9 * MIB, 7 * MIB + 17],
    # a tiny last partial: still a part of its own (the last part may be small)
    "tiny-last": [10 * MIB, 100],
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_final_sends_no_partial_byte_again(
    store: ObjectStore, catalog: Catalog, moto_bytes: Callable[[], Counter[str]], layout: str
) -> None:
    """Partials of at least 5 MiB (all but the last): the final's parts are copied by the
    store, no byte is uploaded (wrapper and moto's request log agree: UploadPart and PutObject
    carry 0 bytes), every ledger part has its bytes' SHA-256, and the completed final is the
    source."""
    sizes = LAYOUTS[layout]
    data = source_of(sizes)
    writer = TusWriter(store, catalog, part_size=PART)
    partials = partials_of(writer, data, sizes)
    counting = CountingStore(store)
    final_writer = TusWriter(counting, catalog, part_size=PART)  # type: ignore[arg-type]
    final = new_row(final_writer, len(data), "final", "alice")
    before = moto_bytes()

    result = concat.assemble_final(final_writer, final, partials, first_bytes_check=sniff_container)

    sent_to_moto = moto_bytes() - before
    assert counting.sent == Counter()  # nothing sent through the store's upload calls
    assert sent_to_moto["UploadPart"] == sent_to_moto["PutObject"] == 0
    assert counting.copied == len(data)  # every byte copied by the store itself
    if isinstance(store, S3Store):
        assert sent_to_moto["UploadPartCopy"] == 0  # a copy request has no body
    row = result.row
    assert result.completed and row.state == uploads.RECEIVED
    assert row.offset == row.parts_bytes == row.length == len(data)
    assert row.upload_id is not None
    ledger = catalog.ledger_parts(row.upload_id)
    at = 0
    for n in sorted(ledger):
        part = ledger[n]
        assert part.sha256_b64 == b64sha(data[at : at + part.size]), f"part {n}"
        at += part.size
    assert at == len(data)
    assert complete(final_writer, row) == hashlib.sha256(data).hexdigest()


def test_small_middle_partial_is_merged_through_memory(
    store: ObjectStore, catalog: Catalog, moto_bytes: Callable[[], Counter[str]]
) -> None:
    """A partial below 5 MiB that is not the last cannot be a part: it and the next partial's
    first part are read and sent as one part (exactly the plan's merged bytes, nothing more);
    the rest is copied. The final is the source."""
    sizes = [7 * MIB, 2 * MIB, 9 * MIB + 5]
    data = source_of(sizes)
    writer = TusWriter(store, catalog, part_size=PART)
    partials = partials_of(writer, data, sizes)
    counting = CountingStore(store)
    final_writer = TusWriter(counting, catalog, part_size=PART)  # type: ignore[arg-type]
    final = new_row(final_writer, len(data), "final", "alice")
    before = moto_bytes()

    result = concat.assemble_final(final_writer, final, partials)

    merged = sum(p.merged_bytes for p in plan_concatenation([(s, PART) for s in sizes]))
    assert merged == 2 * MIB + PART  # the small partial and the next one's first part
    assert counting.sent == Counter({"upload_part": merged})
    assert counting.copied == len(data) - merged
    sent_to_moto = moto_bytes() - before
    if isinstance(store, S3Store):
        assert sent_to_moto["UploadPart"] == merged and sent_to_moto["PutObject"] == 0
    assert complete(final_writer, result.row) == hashlib.sha256(data).hexdigest()


def test_a_non_video_final_is_refused_before_any_part(store: ObjectStore, catalog: Catalog) -> None:
    """The first-bytes check sees the final's head before the store copies anything."""
    sizes = [6 * MIB, 6 * MIB]
    data = b"not a video at all" + random_bytes(sum(sizes))[18:]
    writer = TusWriter(store, catalog, part_size=PART)
    partials = partials_of(writer, data, sizes)
    counting = CountingStore(store)
    final_writer = TusWriter(counting, catalog, part_size=PART)  # type: ignore[arg-type]
    final = new_row(final_writer, len(data), "final", "alice")
    with pytest.raises(InputRejectedError):
        concat.assemble_final(final_writer, final, partials, first_bytes_check=sniff_container)
    assert counting.copies == 0 and counting.sent == Counter()
    assert final.upload_id is not None
    assert catalog.ledger_parts(final.upload_id) == {}


def test_killed_assembly_is_redone_from_the_intact_partials(
    store: ObjectStore, catalog: Catalog
) -> None:
    """Killed after the store copied a part: the half-made final is terminated (as the
    creation handler does) and nothing of it is left; the partials' objects are intact, and a
    new final from them is the source, still without a byte uploaded again."""
    sizes = [11 * MIB, 8 * MIB + 3]
    data = source_of(sizes)
    writer = TusWriter(store, catalog, part_size=PART)
    partials = partials_of(writer, data, sizes)
    dying = TusWriter(CountingStore(store, die_after_copies=1), catalog, part_size=PART)  # type: ignore[arg-type]
    doomed = new_row(dying, len(data), "final", "alice")
    with pytest.raises(Killed):
        concat.assemble_final(dying, doomed, partials)
    writer.terminate(doomed)
    assert store.list_objects(uploads.upload_prefix(doomed.id)) == []
    assert store.list_uploads(uploads.upload_prefix(doomed.id)) == []

    counting = CountingStore(store)
    again = TusWriter(counting, catalog, part_size=PART)  # type: ignore[arg-type]
    final = new_row(again, len(data), "final", "alice")
    result = concat.assemble_final(again, final, partials)
    assert counting.sent == Counter()
    assert complete(again, result.row) == hashlib.sha256(data).hexdigest()
