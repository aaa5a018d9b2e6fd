"""The tus writer (storage/tus_writer.py) and its table (storage/gateway_uploads.py).

On moto's S3 server over HTTP and on the local store, with the catalog on a SQLite file and on
the machine's PostgreSQL. Bodies are random bytes (os.urandom); the assembled object (completed
through the store with the ledger's parts) must have the source's SHA-256. Kills are simulated
by a store or catalog that raises a BaseException (nothing in the writer handles it, as nothing
runs after a SIGKILL) at one point; a fresh writer then resumes from the offset the row reports.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reelflow.errors import (
    ConfigurationError,
    InputRejectedError,
    IntegrityCheckError,
    LeaseLostError,
)
from reelflow.planning import MIB, Chunk
from reelflow.rules import MAGIC_BYTES_NEEDED, sniff_container
from storage import gateway_uploads as uploads
from storage.base import ObjectStore, PartReceipt
from storage.catalog import Catalog, Media
from storage.clock import utcnow
from storage.gateway_uploads import GatewayUpload
from storage.leases import Leases
from storage.local import LocalStore
from storage.s3 import S3Store, make_s3_client
from storage.tus_writer import (
    ChecksumMismatchError,
    LengthExceededError,
    TusWriter,
    UploadConflictError,
)

PART = 5 * MIB
FILE_BYTES = 12 * MIB + 4321
MP4_HEAD = b"\x00\x00\x00\x20ftypisom\x00\x00\x02\x00isomiso2avc1mp41"


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "local":
        return LocalStore((tmp_path / "objects").as_uri())
    server = request.getfixturevalue("s3_server")
    bucket = request.getfixturevalue("bucket")
    return S3Store(f"s3://{bucket}/media", make_s3_client(endpoint_url=server.endpoint_url))


@functools.cache
def source_bytes() -> bytes:
    """The module's random source (made once; never a hypothesis argument, which it prints)."""
    return os.urandom(FILE_BYTES)


@pytest.fixture
def source() -> bytes:
    return source_bytes()


@pytest.fixture
def writer(store: ObjectStore, catalog: Catalog) -> TusWriter:
    return TusWriter(store, catalog, part_size=PART)


@dataclass
class Sha256:
    """An Upload-Checksum as the writer needs it (sha256 of the PATCH body)."""

    digest: bytes

    @classmethod
    def of(cls, data: bytes) -> Sha256:
        return cls(hashlib.sha256(data).digest())

    def hasher(self) -> Any:
        return hashlib.sha256()

    def matches(self, digest: bytes) -> bool:
        return hmac.compare_digest(digest, self.digest)


class Killed(BaseException):
    """The process died here (nothing in the writer may handle it)."""


def new_row(writer: TusWriter, length: int | None, *, owner: str = "alice") -> GatewayUpload:
    return writer.create(
        GatewayUpload(
            id=secrets.token_urlsafe(18),
            owner=owner,
            length=length,
            metadata_json=json.dumps({"filename": "clip.mp4", "filetype": "video/mp4"}),
            expires_at=utcnow() + timedelta(days=1),
        )
    )


def pieces(data: bytes, size: int) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def head(writer: TusWriter, row: GatewayUpload) -> GatewayUpload:
    got = uploads.get(writer.catalog.engine, row.id)
    assert got is not None
    return got


def objects(store: ObjectStore, row: GatewayUpload) -> list[str]:
    return sorted(k for k, _ in store.list_objects(uploads.upload_prefix(row.id)))


def assemble(writer: TusWriter, row: GatewayUpload) -> str:
    """Complete the staged upload with the ledger's parts (after checking them against the
    store's) and return the stored object's SHA-256."""
    assert row.upload_id is not None
    ledger = writer.catalog.ledger_parts(row.upload_id)
    listed = writer.store.list_parts(row.staging_key, row.upload_id)
    assert sorted(ledger) == sorted(listed) == list(range(1, len(ledger) + 1))
    for n, part in ledger.items():
        assert part.size == listed[n].size
        if listed[n].sha256_b64:  # moto's ListParts leaves the part checksums out
            assert part.sha256_b64 == listed[n].sha256_b64
    writer.store.complete_upload(
        row.staging_key, row.upload_id, [ledger[n] for n in sorted(ledger)]
    )
    return writer.store.sha256_hex(row.staging_key)


def assert_invariants(writer: TusWriter, row: GatewayUpload) -> None:
    """What a row may claim: whole parts in the ledger and the store, plus a tail object of
    exactly tail_size bytes."""
    assert row.offset == row.parts_bytes + row.tail_size
    assert row.parts_bytes % PART == 0 or row.state == uploads.RECEIVED
    assert 0 <= row.tail_size < PART
    assert row.upload_id is not None
    ledger = writer.catalog.ledger_parts(row.upload_id)
    counted = {n: p for n, p in ledger.items() if n < row.next_part}
    assert sorted(counted) == list(range(1, row.next_part))
    assert sum(p.size for p in counted.values()) == row.parts_bytes
    if row.tail_size:
        assert row.tail_key is not None
        assert writer.store.size(row.tail_key) == row.tail_size
        tail = writer.store.read_range(row.tail_key, 0, row.tail_size)
        assert base64.b64encode(hashlib.sha256(tail).digest()).decode() == row.tail_sha256
    else:
        assert row.tail_key is None


# --- bodies ending anywhere ------------------------------------------------------------------


@settings(
    max_examples=10,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_bodies_ending_anywhere(store: ObjectStore, catalog: Catalog, data: st.DataObject) -> None:
    """PATCHes cut anywhere, read in any block size, some cut off by a dropped connection, each
    by a fresh writer (any instance): every offset counts exactly the bytes sent, and the
    assembled object is the source."""
    length = data.draw(st.sampled_from([FILE_BYTES, 2 * PART, PART + 1, PART - 1, 4097]))
    body = source_bytes()[:length]
    # Anywhere, and right around the part boundaries and the head check, where bugs live.
    near = st.builds(
        lambda k, d: k * PART + d,
        st.integers(0, 2),
        st.sampled_from([-1, 1, 2, MAGIC_BYTES_NEEDED - 1, MAGIC_BYTES_NEEDED, PART - 1]),
    )
    cut = st.one_of(st.integers(1, length - 1), near).filter(lambda c: 0 < c < length)
    cuts = sorted(set(data.draw(st.lists(cut, max_size=4))))
    deferred = data.draw(st.booleans())
    block = data.draw(st.sampled_from([64 * 1024, MIB + 7, 3 * MIB, 8 * MIB]))
    row = new_row(TusWriter(store, catalog, part_size=PART), None if deferred else length)
    bounds = [0, *cuts, length]
    for i, (start, end) in enumerate(zip(bounds, bounds[1:], strict=False)):
        w = TusWriter(store, catalog, part_size=PART)
        row = head(w, row)
        assert row.offset == start
        if deferred and end == length:
            row = w.declare_length(row, length)
        dropped = data.draw(st.booleans(), label=f"patch {i} dropped")
        chunks = pieces(body[start:end], block)
        if dropped:
            chunks = dropping(chunks)
            with pytest.raises(ConnectionResetError):
                w.append(row, chunks)
        else:
            w.append(row, chunks)
        row = head(w, row)
        assert row.offset == end
        assert_invariants(w, row)
    assert row.state == uploads.RECEIVED
    w = TusWriter(store, catalog, part_size=PART)
    assert assemble(w, row) == hashlib.sha256(body).hexdigest()
    assert objects(store, row) == [row.staging_key]  # no tail left behind
    assert row.session_id is not None
    session = catalog.get_session(row.session_id)
    assert session is not None
    assert (session.size_bytes, session.parts_total) == (length, -(-length // PART))


def dropping(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """The body as sent, then the connection drops (what starlette's stream raises)."""
    yield from chunks
    raise ConnectionResetError("client went away")


# --- the tail --------------------------------------------------------------------------------


def test_tail_is_promoted_into_a_part(writer: TusWriter, source: bytes) -> None:
    """A short PATCH leaves a tail object; once the buffer reaches a part it becomes part 1
    (not a growing object), and only the current tail object remains."""
    row = new_row(writer, FILE_BYTES)
    res = writer.append(row, [source[: 2 * MIB]])
    assert (res.row.offset, res.row.tail_size, res.row.parts_bytes) == (2 * MIB, 2 * MIB, 0)
    assert res.bytes_written == 2 * MIB and not res.completed
    assert objects(writer.store, row) == [res.row.tail_key]
    assert writer.catalog.ledger_parts(str(row.upload_id)) == {}

    res = writer.append(res.row, pieces(source[2 * MIB : 6 * MIB], MIB))
    row = res.row
    assert (row.parts_bytes, row.tail_size, row.next_part) == (PART, MIB, 2)
    ledger = writer.catalog.ledger_parts(str(row.upload_id))
    assert list(ledger) == [1] and ledger[1].size == PART
    assert ledger[1].sha256_b64 == base64.b64encode(hashlib.sha256(source[:PART]).digest()).decode()
    assert objects(writer.store, row) == [row.tail_key]
    assert writer.store.read_range(str(row.tail_key), 0, MIB) == source[PART : 6 * MIB]

    res = writer.append(row, pieces(source[6 * MIB :], 3 * MIB))
    assert res.completed and res.row.offset == FILE_BYTES
    assert assemble(writer, res.row) == hashlib.sha256(source).hexdigest()


def test_damaged_tail_is_refused(writer: TusWriter, source: bytes) -> None:
    """A tail object that no longer holds the bytes the row counts (same size, other bytes)
    is refused when read back, before any of it goes into a part."""
    row = writer.append(new_row(writer, FILE_BYTES), [source[: 2 * MIB]]).row
    assert row.tail_key is not None
    writer.store.put_bytes(row.tail_key, source[1 : 2 * MIB + 1], "application/octet-stream")
    with pytest.raises(IntegrityCheckError):
        writer.append(row, [source[2 * MIB : 6 * MIB]])
    assert head(writer, row).model_dump() == row.model_dump()
    assert writer.catalog.ledger_parts(str(row.upload_id)) == {}


def test_deferred_upload_made_only_of_a_tail(writer: TusWriter, source: bytes) -> None:
    """A deferred-length upload whose bytes all sit in the tail completes once the length is
    declared (with an empty body): the tail becomes the one, short part."""
    row = new_row(writer, None)
    row = writer.append(row, [source[:3000]]).row
    row = writer.declare_length(row, 3000)
    res = writer.append(row, [])
    assert res.completed and res.bytes_written == 0
    assert assemble(writer, res.row) == hashlib.sha256(source[:3000]).hexdigest()


# --- checksums, lengths, first bytes ---------------------------------------------------------


def test_checksum_mismatch_leaves_everything_unchanged(writer: TusWriter, source: bytes) -> None:
    """A checksummed PATCH that does not match is discarded whole: the row, the ledger, the
    parts and the objects are as before; the same bytes with the right checksum then count."""
    row = writer.append(new_row(writer, FILE_BYTES), [source[: 6 * MIB]]).row
    before = (row.model_dump(), objects(writer.store, row))
    ledger = writer.catalog.ledger_parts(str(row.upload_id))
    listed = writer.store.list_parts(row.staging_key, str(row.upload_id))
    body = source[6 * MIB : 11 * MIB + 5]
    with pytest.raises(ChecksumMismatchError) as err:
        writer.append(row, pieces(body, MIB), checksum=Sha256.of(body + b"x"))
    assert err.value.retryable
    after = head(writer, row)
    assert (after.model_dump(), objects(writer.store, row)) == before
    assert writer.catalog.ledger_parts(str(row.upload_id)) == ledger
    assert writer.store.list_parts(row.staging_key, str(row.upload_id)) == listed

    res = writer.append(after, pieces(body, MIB), checksum=Sha256.of(body))
    assert res.row.offset == 11 * MIB + 5 and res.row.parts_bytes == 2 * PART
    res = writer.append(
        res.row, [source[res.row.offset :]], checksum=Sha256.of(source[res.row.offset :])
    )
    assert assemble(writer, res.row) == hashlib.sha256(source).hexdigest()


def test_body_past_the_length_is_refused(writer: TusWriter, source: bytes) -> None:
    """Bytes beyond Upload-Length: LengthExceededError, nothing of the body counted."""
    row = new_row(writer, 3 * MIB)
    with pytest.raises(LengthExceededError):
        writer.append(row, [source[: 2 * MIB], source[2 * MIB : 4 * MIB]])
    assert head(writer, row).offset == 0
    with pytest.raises(LengthExceededError):
        writer.append(row, [source[: 4 * MIB]], checksum=Sha256.of(source[: 4 * MIB]))
    assert objects(writer.store, row) == []


def test_first_bytes_refused_before_anything_is_committed(writer: TusWriter, source: bytes) -> None:
    """A non-video's first PATCH raises the check's InputRejectedError with nothing committed; a
    video's head is checked once, as soon as MAGIC_BYTES_NEEDED bytes arrived."""
    row = new_row(writer, FILE_BYTES)
    with pytest.raises(InputRejectedError):
        writer.append(row, pieces(source[: 6 * MIB], MIB), first_bytes_check=sniff_container)
    row = head(writer, row)
    assert (row.offset, objects(writer.store, row)) == (0, [])
    assert writer.catalog.ledger_parts(str(row.upload_id)) == {}

    video = MP4_HEAD + source[len(MP4_HEAD) :]
    seen: list[bytes] = []
    row = new_row(writer, FILE_BYTES)
    row = writer.append(row, [video[:1000]], first_bytes_check=seen.append).row
    assert seen == []  # not enough bytes yet: the tail keeps them
    row = writer.append(row, pieces(video[1000 : 6 * MIB], 1500), first_bytes_check=seen.append).row
    assert seen == [video[:MAGIC_BYTES_NEEDED]]
    writer.append(row, [video[6 * MIB :]], first_bytes_check=seen.append)
    assert len(seen) == 1
    assert sniff_container(seen[0]) == "mp4"


def test_part_size_below_s3_minimum_is_refused(store: ObjectStore, catalog: Catalog) -> None:
    with pytest.raises(ConfigurationError):
        TusWriter(store, catalog, part_size=PART - 1)


# --- zero length, termination ----------------------------------------------------------------


def test_zero_length_upload(writer: TusWriter) -> None:
    """Upload-Length 0: one empty part, received at once; the object is empty."""
    row = writer.finish_zero_length(new_row(writer, 0))
    assert (row.state, row.offset, row.next_part) == (uploads.RECEIVED, 0, 2)
    assert assemble(writer, row) == hashlib.sha256(b"").hexdigest()
    other = writer.append(new_row(writer, 0), [])
    assert other.completed and other.row.offset == 0


def test_terminate_leaves_nothing(writer: TusWriter, source: bytes) -> None:
    """DELETE after parts and a tail: no pending multipart upload, no object, no ledger part;
    the row is cancelled, and terminating again is harmless."""
    row = writer.append(new_row(writer, FILE_BYTES), [source[: 7 * MIB]]).row
    assert row.tail_size and row.parts_bytes
    done = writer.terminate(row)
    assert done.state == uploads.CANCELLED
    assert writer.store.list_uploads(uploads.INCOMING_PREFIX) == []
    assert objects(writer.store, row) == []
    assert writer.catalog.ledger_parts(str(row.upload_id)) == {}
    writer.terminate(done)
    with pytest.raises(UploadConflictError):
        writer.append(done, [b"x"])


def test_purge_keeps_an_upload_that_became_media(writer: TusWriter, source: bytes) -> None:
    """A gateway upload is stored where it was received: once a media row names its video,
    purge (a failure path after the store step, a repeated sweep) removes its tails and ledger
    but never the media's video, thumbnail or metadata."""
    row = writer.append(new_row(writer, FILE_BYTES), [source]).row
    assemble(writer, row)
    thumb, meta = f"{row.staging_key}.jpg", f"{row.staging_key}.json"
    writer.store.put_bytes(thumb, b"jpeg", "image/jpeg")
    writer.store.put_bytes(meta, b"{}", "application/json")
    stale_tail = uploads.new_tail_key(row.id)
    writer.store.put_bytes(stale_tail, b"tail", "application/octet-stream")
    sha = hashlib.sha256(source).hexdigest()
    writer.catalog.upsert_media(
        Media(
            media_id=f"m_{sha[:20]}",
            sha256=sha,
            size_bytes=len(source),
            content_type="video/mp4",
            container="mp4",
            duration_s=1.0,
            width=720,
            height=1280,
            fps=30.0,
            video_codec="h264",
            has_audio=False,
            store_url=writer.store.url,
            video_key=row.staging_key,
            thumbnail_key=thumb,
            metadata_key=meta,
            source_uri=f"tus:{row.id}",
        )
    )
    writer.purge(head(writer, row))
    assert objects(writer.store, row) == sorted([row.staging_key, thumb, meta])
    assert writer.store.sha256_hex(row.staging_key) == sha


# --- concurrency -----------------------------------------------------------------------------


@pytest.mark.parametrize("loser_ends_in", ["part", "tail"])
def test_cas_conflict_between_two_writers(
    store: ObjectStore, catalog: Catalog, source: bytes, loser_ends_in: str
) -> None:
    """Two instances PATCH one row from the same version: the first CAS wins, the other raises
    UploadConflictError and leaves nothing the row counts (nor an object it names)."""
    a, b = (TusWriter(store, catalog, part_size=PART) for _ in range(2))
    row = a.append(new_row(a, FILE_BYTES), [source[:MIB]]).row
    loser_end = 7 * MIB if loser_ends_in == "part" else 3 * MIB

    def body_of_a() -> Iterator[bytes]:
        yield source[MIB : 2 * MIB]
        b.append(row, [source[MIB : 8 * MIB]])  # the other instance, meanwhile
        yield source[2 * MIB : loser_end]

    with pytest.raises(UploadConflictError):
        a.append(row, body_of_a())
    won = head(b, row)
    assert (won.offset, won.parts_bytes, won.tail_size) == (8 * MIB, PART, 3 * MIB)
    assert objects(store, row) == [won.tail_key]
    assert_invariants(b, won)
    with pytest.raises(UploadConflictError):  # a stale row is refused before any byte
        a.append(row, [source[MIB:]])
    res = a.append(won, [source[8 * MIB :]])
    assert assemble(a, res.row) == hashlib.sha256(source).hexdigest()


def test_stale_fence_writes_nothing(writer: TusWriter, source: bytes) -> None:
    """A request whose hold another instance took over: its write is refused (LeaseLostError)
    and the tail object it wrote is removed."""
    row = new_row(writer, FILE_BYTES)
    leases = Leases(writer.catalog.engine, ttl_s=0.0)
    stale = leases.acquire(f"tus:{row.id}", "gw:a:1")
    assert stale is not None and leases.acquire(f"tus:{row.id}", "gw:b:1") is not None
    with pytest.raises(LeaseLostError):
        writer.append(row, [source[:MIB]], fence=stale)
    assert head(writer, row).model_dump() == row.model_dump()
    assert objects(writer.store, row) == []


# --- kills -----------------------------------------------------------------------------------


class KillingStore:
    """The real store, dying right after one operation succeeded."""

    def __init__(self, inner: ObjectStore, after: str) -> None:
        self.inner, self.after = inner, after
        self.url = inner.url

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def upload_part(
        self, key: str, upload_id: str, chunk: Chunk, data: bytes | bytearray, sha256_b64: str
    ) -> PartReceipt:
        receipt = self.inner.upload_part(key, upload_id, chunk, data, sha256_b64)
        if self.after == "upload_part":
            raise Killed
        return receipt

    def put_bytes(self, key: str, data: bytes, content_type: str) -> None:
        self.inner.put_bytes(key, data, content_type)
        if self.after == "put_bytes":
            raise Killed


class KillingCatalog(Catalog):
    """The real catalog, dying right after a part is recorded (before the row's CAS)."""

    def record_part(
        self, session_id: str, upload_id: str, offset: int, receipt: PartReceipt
    ) -> None:
        super().record_part(session_id, upload_id, offset, receipt)
        raise Killed


@pytest.mark.parametrize("point", ["upload_part", "record_part", "put_bytes"])
def test_killed_writer_resumes_without_loss(
    store: ObjectStore, catalog: Catalog, source: bytes, point: str
) -> None:
    """Killed between upload_part and record_part, between record_part and the CAS, or between
    put_bytes(tail) and the CAS: the row counts only what was durable before, and a fresh writer
    resumes from that offset to the exact source."""
    first = TusWriter(store, catalog, part_size=PART)
    row = first.append(new_row(first, FILE_BYTES), [source[: 2 * MIB]]).row
    dying_store: Any = KillingStore(store, point) if point != "record_part" else store
    dying_catalog = KillingCatalog(catalog.engine) if point == "record_part" else catalog
    dying = TusWriter(dying_store, dying_catalog, part_size=PART)
    with pytest.raises(Killed):
        dying.append(row, pieces(source[2 * MIB : 8 * MIB], MIB))

    fresh = TusWriter(store, catalog, part_size=PART)
    row = head(fresh, row)
    # Part 1 counts only when its CAS ran (the put_bytes kill comes after it).
    assert row.offset == (PART if point == "put_bytes" else 2 * MIB)
    assert_invariants(fresh, row)
    res = fresh.append(row, pieces(source[row.offset : 9 * MIB], 2 * MIB))
    res = fresh.append(res.row, [source[9 * MIB :]])
    assert res.completed
    assert assemble(fresh, res.row) == hashlib.sha256(source).hexdigest()
    assert objects(store, res.row) == [res.row.staging_key]  # the orphan tail went too


# --- the table -------------------------------------------------------------------------------


def _row(owner: str, **fields: Any) -> GatewayUpload:
    uid = secrets.token_urlsafe(18)
    return GatewayUpload(
        id=uid,
        owner=owner,
        store_url="file:///s",
        staging_key=uploads.staging_key_for(uid),
        part_size=PART,
        expires_at=fields.pop("expires_at", utcnow() + timedelta(days=1)),
        **fields,
    )


def test_rows_belong_to_their_owner(catalog: Catalog) -> None:
    """get_for_owner hides another owner's upload; list_for_owner is newest first and pages."""
    engine = catalog.engine
    base = utcnow()
    mine = [
        uploads.create(engine, _row("ann", created_at=base + timedelta(seconds=i)))
        for i in range(3)
    ]
    other = uploads.create(engine, _row("bob"))
    assert uploads.get_for_owner(engine, mine[0].id, "ann") is not None
    assert uploads.get_for_owner(engine, other.id, "ann") is None
    assert uploads.get_for_owner(engine, "nope", "ann") is None
    listed = uploads.list_for_owner(engine, "ann", limit=2)
    assert [r.id for r in listed] == [mine[2].id, mine[1].id]
    older = uploads.list_for_owner(engine, "ann", before=listed[-1].created_at)
    assert [r.id for r in older] == [mine[0].id]


def test_cas_update_is_compare_and_swap(catalog: Catalog) -> None:
    """A write on the version read wins once; the same version again is refused (None)."""
    row = uploads.create(catalog.engine, _row("ann"))
    won = uploads.cas_update(catalog.engine, row.id, 0, offset=10)
    assert won is not None and (won.version, won.offset) == (1, 10)
    assert uploads.cas_update(catalog.engine, row.id, 0, offset=20) is None
    assert uploads.get(catalog.engine, row.id).offset == 10  # type: ignore[union-attr]
    assert uploads.cas_update(catalog.engine, "missing", 0, offset=1) is None
    with pytest.raises(ValueError):
        uploads.cas_update(catalog.engine, row.id, 1, version=7)


def test_sweeper_queries(catalog: Catalog) -> None:
    """list_expired: receiving rows past expires_at; list_received_without_run: received rows
    no run took, untouched since the cut-off."""
    engine, now = catalog.engine, utcnow()
    expired = uploads.create(engine, _row("ann", expires_at=now - timedelta(seconds=5)))
    live = uploads.create(engine, _row("ann", expires_at=now + timedelta(hours=1)))
    gone = uploads.create(
        engine, _row("ann", expires_at=now - timedelta(seconds=5), state=uploads.CANCELLED)
    )
    # The PostgreSQL database is the session's: look only at this test's rows.
    ids = {r.id for r in uploads.list_expired(engine, now)}
    assert expired.id in ids and not ids & {live.id, gone.id}

    waiting = uploads.create(engine, _row("ann", state=uploads.RECEIVED))
    taken = uploads.create(engine, _row("ann", state=uploads.RECEIVED, flow_run_id="run-1"))
    later = now + timedelta(seconds=60)
    ids = {r.id for r in uploads.list_received_without_run(engine, later)}
    assert waiting.id in ids and taken.id not in ids
    earlier = uploads.list_received_without_run(engine, now - timedelta(seconds=60))
    assert waiting.id not in {r.id for r in earlier}
