"""The upload gateway over HTTP (issue 10): every tus status case, auth, CORS, and tuspy.

A real uvicorn on 127.0.0.1 (a random port, in a thread of the test process) serves the app of
``deployments.gateway``; requests go over TCP with httpx, and tuspy (an independent tus client)
uploads a real MP4. Two backends: the local store on a SQLite catalog, and moto's S3 server on
the machine's PostgreSQL. Only the clock is the test's (expiry); every refusal is checked to
leave nothing behind where the issue says so (no row, no staged upload, no object, no part).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from sqlmodel import Session, select

from deployments.gateway.app import build_app
from reelflow.gateway_tokens import mint, verify
from reelflow.logging import REDACTED
from reelflow.settings import Settings
from reelflow.tus import encode_metadata
from storage import gateway_uploads as uploads
from storage.base import ObjectStore
from storage.catalog import Catalog, UploadPartRow
from storage.gateway_uploads import GatewayUpload
from storage.runtime import Runtime
from tests.support.files import sha256_file
from tests.support.gateway import GatewaySetup
from tests.support.prefect_server import BIN, REPO
from tests.support.waiting import wait_for

MIB = 1024 * 1024
PART_BYTES = 5 * MIB
MAX_BYTES = 64 * MIB
SECRET = "test-gateway-secret-" + "k" * 32
ORIGIN = "https://app.example.com"
STARTUP_S = 30.0
REQUEST_TIMEOUT_S = 60.0


@dataclass
class Clock:
    """The gateway's clock: real time plus an offset the test moves (expiry)."""

    offset: timedelta = field(default_factory=timedelta)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset


class Handoff:
    """The hand-off of a test: remembers which uploads became complete."""

    def __init__(self) -> None:
        self.ids: list[str] = []

    def received(self, row: Any) -> None:
        self.ids.append(row.id)


@dataclass
class Gw:
    """A running gateway: its URL, clock, store, catalog and hand-off."""

    base_url: str
    clock: Clock
    store: ObjectStore
    catalog: Catalog
    handoff: Handoff
    settings: Settings

    @property
    def uploads_url(self) -> str:
        return f"{self.base_url}/uploads/"

    def token(self, subject: str, **kwargs: Any) -> str:
        kwargs.setdefault("ttl_s", 3600)
        kwargs.setdefault("now", datetime.now(UTC))
        return mint(SECRET, subject, **kwargs)

    def row(self, upload_id: str) -> GatewayUpload | None:
        return uploads.get(self.catalog.engine, upload_id)

    def rows_of(self, owner: str) -> list[GatewayUpload]:
        with Session(self.catalog.engine) as s:
            return list(s.exec(select(GatewayUpload).where(GatewayUpload.owner == owner)).all())

    def assert_nothing_left(self, upload_id: str) -> None:
        """No staged upload, no object and no ledger part of ``upload_id`` remain."""
        prefix = uploads.upload_prefix(upload_id)
        assert [u for u in self.store.list_uploads(prefix)] == []
        assert self.store.list_objects(prefix) == []
        with Session(self.catalog.engine) as s:
            parts = s.exec(
                select(UploadPartRow).where(UploadPartRow.session_id == f"gw_{upload_id}")
            ).all()
        assert list(parts) == []

    def assert_no_upload_of(self, owner: str) -> None:
        """A refused creation made no row (and so staged nothing)."""
        assert self.rows_of(owner) == []


class _Server(uvicorn.Server):
    def install_signal_handlers(self) -> None:  # a thread of the test process
        pass


def _start(app: Any) -> tuple[_Server, threading.Thread, str]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=5)
    server = _Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    wait_for(lambda: server.started, "the gateway to start", timeout_s=STARTUP_S, poll_s=0.05)
    return server, thread, f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module", params=["local-sqlite", "s3-postgres"])
def running_gw(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gw]:
    """A gateway in this process for the module: local store + SQLite, or moto S3 +
    PostgreSQL. Tests share it; each uses its own creators, so none sees another's uploads."""
    values: dict[str, Any] = {
        "home": tmp_path_factory.mktemp("gw") / "home",
        "gateway_secret": SECRET,
        "gateway_part_size_bytes": PART_BYTES,
        "gateway_max_size_bytes": MAX_BYTES,
        "gateway_cors_origins": ORIGIN,
        "gateway_lock_ttl_s": 30,
    }
    if request.param == "s3-postgres":
        s3 = request.getfixturevalue("s3_server")
        bucket = f"rf-gw-{uuid.uuid4().hex[:12]}"
        s3.client().create_bucket(Bucket=bucket)
        values |= {
            "store_url": f"s3://{bucket}/media",
            "s3_endpoint_url": s3.endpoint_url,
            "database_url": request.getfixturevalue("pg_url"),
        }
    settings = Settings(**values)
    runtime = Runtime.from_settings(settings)
    clock = Clock()
    handoff = Handoff()
    app = build_app(settings, runtime=runtime, handoff=handoff, now=clock)
    server, thread, base_url = _start(app)
    try:
        yield Gw(base_url, clock, runtime.store, runtime.catalog, handoff, settings)
    finally:
        server.should_exit = True
        thread.join(timeout=15)


@pytest.fixture
def gw(running_gw: Gw) -> Iterator[Gw]:
    """The module's gateway with its clock at real time for this test."""
    running_gw.clock.offset = timedelta()
    yield running_gw
    running_gw.clock.offset = timedelta()


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=REQUEST_TIMEOUT_S) as c:
        yield c


def auth(token: str, **extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Tus-Resumable": "1.0.0", **extra}


def creator() -> str:
    return f"creator-{uuid.uuid4().hex[:10]}"


def create(
    client: httpx.Client, gw: Gw, token: str, length: int | None, **headers: str
) -> httpx.Response:
    h = auth(token, **headers)
    if length is None:
        h.setdefault("Upload-Defer-Length", "1")
    else:
        h["Upload-Length"] = str(length)
    return client.post(gw.uploads_url, headers=h)


def upload_id_of(response: httpx.Response) -> str:
    assert response.status_code == 201, response.text
    return response.headers["location"].rstrip("/").rsplit("/", 1)[1]


def patch(
    client: httpx.Client, url: str, token: str, offset: int, body: bytes, **headers: str
) -> httpx.Response:
    h = auth(
        token,
        **{"Upload-Offset": str(offset), "Content-Type": "application/offset+octet-stream"},
    )
    h.update(headers)
    return client.patch(url, headers=h, content=body)


def b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


# --- discovery ------------------------------------------------------------------------------------


def test_options_announces_the_protocol(gw: Gw, client: httpx.Client) -> None:
    """OPTIONS: version, every extension, the size limit, the checksum algorithms; no
    Tus-Resumable (the one response without it) and no token needed."""
    r = client.options(gw.uploads_url)
    assert r.status_code == 204
    assert r.headers["tus-version"] == "1.0.0"
    assert set(r.headers["tus-extension"].split(",")) == {
        "creation",
        "creation-with-upload",
        "creation-defer-length",
        "expiration",
        "checksum",
        "termination",
        "concatenation",
    }
    assert r.headers["tus-max-size"] == str(MAX_BYTES)
    assert set(r.headers["tus-checksum-algorithm"].split(",")) == {"sha1", "sha256", "md5"}
    assert "tus-resumable" not in r.headers


def test_healthz(gw: Gw, client: httpx.Client) -> None:
    """GET /healthz answers 200 once the catalog answers."""
    r = client.get(f"{gw.base_url}/healthz")
    assert r.status_code == 200
    assert r.json() == {"status": "ok"}


# --- creation -------------------------------------------------------------------------------------


def test_unsupported_version_is_412_and_creates_nothing(gw: Gw, client: httpx.Client) -> None:
    """Another Tus-Resumable → 412 with Tus-Version; the request is not processed."""
    who = creator()
    h = auth(gw.token(who), **{"Tus-Resumable": "0.2.2", "Upload-Length": "10"})
    r = client.post(gw.uploads_url, headers=h)
    assert r.status_code == 412
    assert r.headers["tus-version"] == "1.0.0"
    assert r.headers["tus-resumable"] == "1.0.0"
    gw.assert_no_upload_of(who)


@pytest.mark.parametrize("case", ["missing", "not_bearer", "expired", "forged", "alg_none"])
def test_bad_tokens_are_401_on_every_method(gw: Gw, client: httpx.Client, case: str) -> None:
    """Creation, HEAD, PATCH and DELETE each need a valid token: 401 + WWW-Authenticate."""
    who = creator()
    good = gw.token(who)
    url = create(client, gw, good, 100).headers["location"]
    past = datetime.now(UTC) - timedelta(days=2)
    forged_secret = "another-secret-entirely-" + "x" * 32
    bad = {
        "missing": None,
        "not_bearer": "Basic dXNlcjpwYXNz",
        "expired": f"Bearer {mint(SECRET, who, ttl_s=60, now=past)}",
        "forged": f"Bearer {mint(forged_secret, who, ttl_s=3600, now=datetime.now(UTC))}",
        "alg_none": "Bearer "
        + ".".join(
            base64.urlsafe_b64encode(json.dumps(p).encode()).decode().rstrip("=")
            for p in ({"alg": "none", "typ": "JWT"}, {"sub": who, "acc": [], "exp": 2**40})
        )
        + ".",
    }[case]
    headers: dict[str, str] = {"Tus-Resumable": "1.0.0"}
    if bad is not None:
        headers["Authorization"] = bad
    requests = [
        client.post(gw.uploads_url, headers={**headers, "Upload-Length": "5"}),
        client.head(url, headers=headers),
        client.patch(
            url,
            headers={
                **headers,
                "Upload-Offset": "0",
                "Content-Type": "application/offset+octet-stream",
            },
            content=b"abc",
        ),
        client.delete(url, headers=headers),
    ]
    for r in requests:
        assert r.status_code == 401, (r.request.method, r.text)
        assert r.headers["www-authenticate"].startswith("Bearer")
        assert r.headers["tus-resumable"] == "1.0.0"
    assert [r.id for r in gw.rows_of(who)] == [url.rsplit("/", 1)[1]]
    assert gw.row(url.rsplit("/", 1)[1]).offset == 0  # type: ignore[union-attr]


def test_over_the_limit_is_413_and_a_token_lowers_it(gw: Gw, client: httpx.Client) -> None:
    """Upload-Length over Tus-Max-Size → 413; a token's max size lowers the limit."""
    who = creator()
    assert create(client, gw, gw.token(who), MAX_BYTES + 1).status_code == 413
    small = gw.token(who, max_size=1000)
    assert create(client, gw, small, 1001).status_code == 413
    gw.assert_no_upload_of(who)
    assert create(client, gw, small, 1000).status_code == 201


@pytest.mark.parametrize(
    ("metadata", "status"),
    [
        ("filename !!!notbase64", 400),
        ("filename YQ==,filename Yg==", 400),
        (encode_metadata({"filename": "a.mp4", "privacy_level": "EVERYONE_PLEASE"}), 400),
        (encode_metadata({"account": "bad name with spaces"}), 400),
        (encode_metadata({"account": "not-mine"}), 403),
    ],
    ids=["not_base64", "duplicate_key", "bad_privacy", "bad_account_name", "account_not_allowed"],
)
def test_bad_metadata_is_refused_at_creation(
    gw: Gw, client: httpx.Client, metadata: str, status: int
) -> None:
    """Bad options are refused at creation with one line, before a byte is sent."""
    who = creator()
    token = gw.token(who, accounts=["mine"])
    r = create(client, gw, token, 100, **{"Upload-Metadata": metadata})
    assert r.status_code == status, r.text
    assert len(r.text.strip().splitlines()) == 1
    gw.assert_no_upload_of(who)


def test_the_token_allows_its_accounts(gw: Gw, client: httpx.Client) -> None:
    """An account the token lists is accepted and recorded with the upload."""
    who = creator()
    meta = encode_metadata({"filename": "clip.mp4", "account": "mine", "caption": "hi"})
    r = create(client, gw, gw.token(who, accounts=["mine"]), 100, **{"Upload-Metadata": meta})
    row = gw.row(upload_id_of(r))
    assert row is not None and row.account == "mine"


def test_head_reports_the_upload(gw: Gw, client: httpx.Client, clips: Any) -> None:
    """HEAD: Upload-Offset, Upload-Length, Upload-Metadata as given, Cache-Control: no-store,
    Upload-Expires; creation answers 201 with Location, Upload-Offset and Upload-Expires."""
    who = creator()
    token = gw.token(who)
    meta = "filename Y2xpcC5tcDQ=,filetype dmlkZW8vbXA0,flag"
    r = create(client, gw, token, 1234, **{"Upload-Metadata": meta})
    assert r.status_code == 201
    assert r.headers["location"].startswith(gw.uploads_url)
    assert r.headers["upload-offset"] == "0"
    expires = datetime.strptime(r.headers["upload-expires"], "%a, %d %b %Y %H:%M:%S GMT")
    assert abs(expires.replace(tzinfo=UTC) - (datetime.now(UTC) + timedelta(days=1))) < timedelta(
        minutes=5
    )
    h = client.head(r.headers["location"], headers=auth(token))
    assert h.status_code == 200
    assert h.headers["upload-offset"] == "0"
    assert h.headers["upload-length"] == "1234"
    assert h.headers["upload-metadata"] == meta
    assert h.headers["cache-control"] == "no-store"
    assert h.headers["tus-resumable"] == "1.0.0"
    assert "upload-expires" in h.headers
    assert h.content == b""


def test_another_creators_upload_is_404(gw: Gw, client: httpx.Client) -> None:
    """HEAD/PATCH/DELETE with another creator's token: 404, like an unknown id; unchanged."""
    owner, other = creator(), creator()
    url = create(client, gw, gw.token(owner), 10).headers["location"]
    intruder = gw.token(other)
    unknown = gw.uploads_url + "nosuchupload00000000000a"
    for target in (url, unknown):
        assert client.head(target, headers=auth(intruder)).status_code == 404
        assert patch(client, target, intruder, 0, b"0123456789").status_code == 404
        assert client.delete(target, headers=auth(intruder)).status_code == 404
    row = gw.row(url.rsplit("/", 1)[1])
    assert row is not None and row.state == "receiving" and row.offset == 0
    assert "upload-offset" not in client.head(unknown, headers=auth(intruder)).headers


# --- PATCH ----------------------------------------------------------------------------------------


def test_patch_rules_409_415_400(gw: Gw, client: httpx.Client, clips: Any) -> None:
    """Wrong offset → 409, wrong content type → 415, past Upload-Length → 400; each leaves
    the offset where it was."""
    who = creator()
    token = gw.token(who)
    data = clips.valid().read_bytes()[:100_000]
    url = create(client, gw, token, len(data)).headers["location"]
    assert patch(client, url, token, 0, data[:50_000]).status_code == 204
    assert patch(client, url, token, 0, data[50_000:]).status_code == 409
    wrong_type = patch(client, url, token, 50_000, data[50_000:], **{"Content-Type": "video/mp4"})
    assert wrong_type.status_code == 415
    past = patch(client, url, token, 50_000, data[50_000:] + b"extra")
    assert past.status_code == 400
    h = client.head(url, headers=auth(token))
    assert h.headers["upload-offset"] == "50000"
    done = patch(client, url, token, 50_000, data[50_000:])
    assert done.status_code == 204
    assert done.headers["upload-offset"] == str(len(data))
    assert "upload-expires" not in done.headers  # complete: it no longer expires
    assert gw.handoff.ids.count(url.rsplit("/", 1)[1]) == 1


def test_patch_answers_upload_expires(gw: Gw, client: httpx.Client, clips: Any) -> None:
    """Every PATCH response of an unfinished upload carries Upload-Expires."""
    who = creator()
    token = gw.token(who)
    data = clips.valid().read_bytes()[:10_000]
    url = create(client, gw, token, len(data) * 2).headers["location"]
    r = patch(client, url, token, 0, data)
    assert r.status_code == 204
    assert r.headers["upload-offset"] == str(len(data))
    assert "upload-expires" in r.headers


def test_a_non_video_is_refused_in_its_first_patch_with_nothing_left(
    gw: Gw, client: httpx.Client
) -> None:
    """The first bytes are magic-checked: a text file → 415 and the upload is terminated."""
    who = creator()
    token = gw.token(who)
    text = b"This is not a video. It is a text file named like one.\n" * 200
    url = create(client, gw, token, len(text) * 10).headers["location"]
    upload_id = url.rsplit("/", 1)[1]
    r = patch(client, url, token, 0, text)
    assert r.status_code == 415, r.text
    assert "not a video" in r.text
    assert client.head(url, headers=auth(token)).status_code == 404
    gw.assert_nothing_left(upload_id)
    assert upload_id not in gw.handoff.ids


def test_an_empty_upload_is_refused(gw: Gw, client: httpx.Client) -> None:
    """Upload-Length: 0 of a single upload is no video: 415 before anything is staged."""
    who = creator()
    assert create(client, gw, gw.token(who), 0).status_code == 415
    gw.assert_no_upload_of(who)


def test_checksums_400_460_and_a_good_one(gw: Gw, client: httpx.Client, clips: Any) -> None:
    """Unknown algorithm → 400; a digest that differs → 460 with the chunk discarded and the
    offset unchanged; sha1, sha256 and md5 that match → 204."""
    who = creator()
    token = gw.token(who)
    data = clips.valid().read_bytes()[:30_000]
    url = create(client, gw, token, len(data)).headers["location"]
    chunk = data[:10_000]
    bad_algo = patch(client, url, token, 0, chunk, **{"Upload-Checksum": "crc32 AAAAAA=="})
    assert bad_algo.status_code == 400
    bad_b64 = patch(client, url, token, 0, chunk, **{"Upload-Checksum": "sha1 !!!"})
    assert bad_b64.status_code == 400
    wrong = b64(hashlib.sha1(b"something else").digest())
    mismatch = patch(client, url, token, 0, chunk, **{"Upload-Checksum": f"sha1 {wrong}"})
    assert mismatch.status_code == 460
    assert client.head(url, headers=auth(token)).headers["upload-offset"] == "0"
    upload_id = url.rsplit("/", 1)[1]
    assert gw.store.list_objects(uploads.upload_prefix(upload_id)) == []  # no tail kept
    offset = 0
    for algo in ("sha1", "sha256", "md5"):
        piece = data[offset : offset + 10_000]
        digest = b64(hashlib.new(algo, piece).digest())
        r = patch(client, url, token, offset, piece, **{"Upload-Checksum": f"{algo} {digest}"})
        assert r.status_code == 204, (algo, r.text)
        offset += len(piece)
    assert offset == len(data)
    assert client.head(url, headers=auth(token)).headers["upload-offset"] == str(len(data))


def test_an_expired_upload_is_410(gw: Gw, client: httpx.Client, clips: Any) -> None:
    """Past Upload-Expires: HEAD and PATCH answer 410."""
    who = creator()
    token = gw.token(who, ttl_s=10 * 86400)
    data = clips.valid().read_bytes()[:10_000]
    url = create(client, gw, token, len(data) * 2).headers["location"]
    assert patch(client, url, token, 0, data).status_code == 204
    gw.clock.offset = timedelta(seconds=gw.settings.gateway_upload_ttl_s + 1)
    assert client.head(url, headers=auth(token)).status_code == 410
    assert patch(client, url, token, len(data), data).status_code == 410


def test_concurrent_patch_is_423_at_once(gw: Gw, client: httpx.Client, clips: Any) -> None:
    """While one PATCH streams into an upload, another PATCH of it gets 423 at once."""
    who = creator()
    token = gw.token(who)
    data = clips.valid().read_bytes()[:200_000]
    url = create(client, gw, token, len(data)).headers["location"]
    release = threading.Event()
    sent_first = threading.Event()

    def slow_body() -> Iterator[bytes]:
        yield data[:100_000]
        sent_first.set()
        release.wait(timeout=30)
        yield data[100_000:150_000]

    first: dict[str, httpx.Response] = {}

    def run_first() -> None:
        with httpx.Client(timeout=REQUEST_TIMEOUT_S) as c:
            first["r"] = c.patch(
                url,
                headers=auth(
                    token,
                    **{
                        "Upload-Offset": "0",
                        "Content-Type": "application/offset+octet-stream",
                    },
                ),
                content=slow_body(),
            )

    t = threading.Thread(target=run_first, daemon=True)
    t.start()
    try:
        assert sent_first.wait(timeout=30)
        upload_id = url.rsplit("/", 1)[1]
        # The first PATCH holds the upload once its hold is in the catalog.
        wait_for(lambda: _held(gw, upload_id), "the first PATCH to hold the upload", 30, 0.05)
        started = time.monotonic()
        second = patch(client, url, token, 0, data[:1000])
        assert second.status_code == 423, second.text
        assert time.monotonic() - started < 5  # at once, not after the first ends
        assert client.delete(url, headers=auth(token)).status_code == 423
    finally:
        release.set()
        t.join(timeout=30)
    assert first["r"].status_code == 204
    assert first["r"].headers["upload-offset"] == "150000"


def _held(gw: Gw, upload_id: str) -> bool:
    from storage.leases import Lease

    with Session(gw.catalog.engine) as s:
        lease = s.get(Lease, f"tus:{upload_id}")
        return lease is not None and lease.owner is not None


# --- extensions -----------------------------------------------------------------------------------


def test_creation_with_upload(gw: Gw, client: httpx.Client, clips: Any) -> None:
    """A POST carrying the first bytes: 201 with the Upload-Offset they reached."""
    who = creator()
    token = gw.token(who)
    data = clips.valid().read_bytes()
    head = data[:20_000]
    r = client.post(
        gw.uploads_url,
        headers=auth(
            token,
            **{
                "Upload-Length": str(len(data)),
                "Content-Type": "application/offset+octet-stream",
            },
        ),
        content=head,
    )
    assert r.status_code == 201, r.text
    assert r.headers["upload-offset"] == str(len(head))
    url = r.headers["location"]
    rest = patch(client, url, token, len(head), data[len(head) :])
    assert rest.status_code == 204
    assert rest.headers["upload-offset"] == str(len(data))


def test_creation_with_a_non_video_body_leaves_nothing(gw: Gw, client: httpx.Client) -> None:
    """creation-with-upload of a non-video: 415, and no upload remains."""
    who = creator()
    body = b"#EXTM3U\n#EXT-X-VERSION:3\n" + b"x" * 5000
    r = client.post(
        gw.uploads_url,
        headers=auth(
            gw.token(who),
            **{"Upload-Length": "100000", "Content-Type": "application/offset+octet-stream"},
        ),
        content=body,
    )
    assert r.status_code == 415
    rows = gw.rows_of(who)
    assert [row.state for row in rows] == ["cancelled"]
    gw.assert_nothing_left(rows[0].id)


def test_deferred_length(gw: Gw, client: httpx.Client, clips: Any) -> None:
    """Upload-Defer-Length: 1 → HEAD says Upload-Defer-Length: 1 until a PATCH declares
    Upload-Length; the upload completes at that length."""
    who = creator()
    token = gw.token(who)
    data = clips.valid().read_bytes()[:40_000]
    url = create(client, gw, token, None).headers["location"]
    h = client.head(url, headers=auth(token))
    assert h.headers["upload-defer-length"] == "1"
    assert "upload-length" not in h.headers
    assert patch(client, url, token, 0, data[:20_000]).status_code == 204
    assert client.head(url, headers=auth(token)).headers["upload-defer-length"] == "1"
    over = patch(client, url, token, 20_000, data[20_000:], **{"Upload-Length": str(MAX_BYTES + 1)})
    assert over.status_code == 413
    r = patch(client, url, token, 20_000, data[20_000:], **{"Upload-Length": str(len(data))})
    assert r.status_code == 204
    h = client.head(url, headers=auth(token))
    assert h.headers["upload-length"] == str(len(data))
    assert h.headers["upload-offset"] == str(len(data))
    assert "upload-defer-length" not in h.headers
    assert gw.handoff.ids.count(url.rsplit("/", 1)[1]) == 1


def test_termination_leaves_nothing(gw: Gw, client: httpx.Client, clips: Any) -> None:
    """DELETE → 204; the staged upload, its tail and its parts are gone; then 404."""
    who = creator()
    token = gw.token(who)
    data = clips.medium().read_bytes()[: PART_BYTES + 123_456]  # one part and a tail
    url = create(client, gw, token, len(data) + 1000).headers["location"]
    upload_id = url.rsplit("/", 1)[1]
    assert patch(client, url, token, 0, data).status_code == 204
    assert gw.store.list_objects(uploads.upload_prefix(upload_id)) != []  # the tail
    r = client.delete(url, headers=auth(token))
    assert r.status_code == 204
    assert r.headers["tus-resumable"] == "1.0.0"
    gw.assert_nothing_left(upload_id)
    assert client.head(url, headers=auth(token)).status_code == 404
    assert patch(client, url, token, len(data), b"x").status_code == 404


def test_method_override(gw: Gw, client: httpx.Client, clips: Any) -> None:
    """X-HTTP-Method-Override: a POST acts as PATCH, then as DELETE."""
    who = creator()
    token = gw.token(who)
    data = clips.valid().read_bytes()[:10_000]
    url = create(client, gw, token, len(data) * 2).headers["location"]
    r = client.post(
        url,
        headers=auth(
            token,
            **{
                "X-HTTP-Method-Override": "PATCH",
                "Upload-Offset": "0",
                "Content-Type": "application/offset+octet-stream",
            },
        ),
        content=data,
    )
    assert r.status_code == 204, r.text
    assert r.headers["upload-offset"] == str(len(data))
    gone = client.post(url, headers=auth(token, **{"X-HTTP-Method-Override": "DELETE"}))
    assert gone.status_code == 204
    gw.assert_nothing_left(url.rsplit("/", 1)[1])
    bad = client.post(url, headers=auth(token, **{"X-HTTP-Method-Override": "TRACE"}))
    assert bad.status_code == 400


def test_concatenation_and_patch_on_final_is_403(gw: Gw, client: httpx.Client, clips: Any) -> None:
    """Two partials, then the final (Upload-Concat: final;...): complete at once with the
    partials' bytes in order; HEAD echoes Upload-Concat; PATCH on it → 403."""
    who = creator()
    token = gw.token(who)
    source = clips.medium()
    data = source.read_bytes()
    cut = len(data) // 2 + 12345
    urls = []
    for piece in (data[:cut], data[cut:]):
        url = create(client, gw, token, len(piece), **{"Upload-Concat": "partial"}).headers[
            "location"
        ]
        assert patch(client, url, token, 0, piece).status_code == 204
        assert client.head(url, headers=auth(token)).headers["upload-concat"] == "partial"
        urls.append(url)
    ids = [u.rsplit("/", 1)[1] for u in urls]
    assert not set(ids) & set(gw.handoff.ids)  # a partial is never handed off
    meta = encode_metadata({"filename": "parallel.mp4"})
    r = client.post(
        gw.uploads_url,
        headers=auth(
            token,
            **{
                "Upload-Concat": "final;" + " ".join(f"/uploads/{i}" for i in ids),
                "Upload-Metadata": meta,
            },
        ),
    )
    assert r.status_code == 201, r.text
    final_url = r.headers["location"]
    final_id = final_url.rsplit("/", 1)[1]
    h = client.head(final_url, headers=auth(token))
    assert h.headers["upload-offset"] == h.headers["upload-length"] == str(len(data))
    assert h.headers["upload-concat"] == "final;" + " ".join(f"/uploads/{i}" for i in ids)
    assert h.headers["upload-metadata"] == meta
    assert patch(client, final_url, token, len(data), b"x").status_code == 403
    assert gw.handoff.ids.count(final_id) == 1
    for i in ids:  # the partials' staging is gone: the final holds the bytes
        gw.assert_nothing_left(i)
    row = gw.row(final_id)
    assert row is not None and row.state == "received"
    assert _assembled_sha256(gw, row) == sha256_file(source)


def test_a_final_of_unfinished_or_foreign_partials_is_refused(
    gw: Gw, client: httpx.Client, clips: Any
) -> None:
    """A final naming an unfinished partial → 400; another creator's partial → 404."""
    who, other = creator(), creator()
    token = gw.token(who)
    part = create(client, gw, token, 100, **{"Upload-Concat": "partial"}).headers["location"]
    foreign = create(client, gw, gw.token(other), 10, **{"Upload-Concat": "partial"}).headers[
        "location"
    ]
    for target, status in ((part, 400), (foreign, 404)):
        pid = target.rsplit("/", 1)[1]
        r = client.post(
            gw.uploads_url, headers=auth(token, **{"Upload-Concat": f"final;/uploads/{pid}"})
        )
        assert r.status_code == status, r.text
    assert [r.kind for r in gw.rows_of(who)] == ["partial"]


# --- CORS -----------------------------------------------------------------------------------------


def test_cors_preflight_and_exposed_headers(gw: Gw, client: httpx.Client) -> None:
    """A browser's preflight from the configured origin is answered (no token); a real
    response exposes Location, Upload-Offset, Upload-Expires and the Tus-* headers."""
    pre = client.options(
        gw.uploads_url,
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "PATCH",
            "Access-Control-Request-Headers": "authorization,tus-resumable,upload-offset,"
            "upload-checksum,content-type,upload-metadata,upload-length",
        },
    )
    assert pre.status_code == 200, pre.text
    assert pre.headers["access-control-allow-origin"] == ORIGIN
    assert "PATCH" in pre.headers["access-control-allow-methods"]
    allowed = pre.headers["access-control-allow-headers"].lower()
    for name in ("upload-offset", "upload-checksum", "tus-resumable", "authorization"):
        assert name in allowed
    other = client.options(
        gw.uploads_url,
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "PATCH"},
    )
    assert other.headers.get("access-control-allow-origin") != "https://evil.example"
    r = create(client, gw, gw.token(creator()), 10, Origin=ORIGIN)
    assert r.status_code == 201
    assert r.headers["access-control-allow-origin"] == ORIGIN
    exposed = {h.strip().lower() for h in r.headers["access-control-expose-headers"].split(",")}
    assert {"location", "upload-offset", "upload-length", "upload-metadata", "upload-expires"} <= (
        exposed
    )
    assert {"tus-resumable", "tus-version", "tus-max-size", "tus-extension"} <= exposed


# --- an independent client ------------------------------------------------------------------------


def _assembled_sha256(gw: Gw, row: GatewayUpload) -> str:
    """Complete the row's staged multipart upload (the hand-off's job) and hash the object."""
    assert row.upload_id is not None
    parts = gw.catalog.ledger_parts(row.upload_id)
    assert sorted(parts) == list(range(1, len(parts) + 1))
    assert sum(p.size for p in parts.values()) == row.length
    gw.store.complete_upload(row.staging_key, row.upload_id, [parts[n] for n in sorted(parts)])
    return gw.store.sha256_hex(row.staging_key)


def test_tuspy_uploads_a_clip_with_checksums(gw: Gw, clips: Any) -> None:
    """tuspy (its own HTTP code) uploads a real MP4 in chunks that are not part-aligned, with
    sha1 Upload-Checksum on every PATCH; the stored bytes' SHA-256 is the source's."""
    from tusclient import client as tus_client

    source = clips.medium()
    who = creator()
    tc = tus_client.TusClient(gw.uploads_url, headers={"Authorization": f"Bearer {gw.token(who)}"})
    uploader = tc.uploader(
        file_path=str(source),
        chunk_size=3 * MIB + 17,
        metadata={"filename": source.name, "filetype": "video/mp4"},
        upload_checksum=True,
        retries=0,
    )
    uploader.upload()
    assert uploader.url is not None
    upload_id = uploader.url.rstrip("/").rsplit("/", 1)[1]
    row = gw.row(upload_id)
    assert row is not None
    assert (row.state, row.offset, row.length) == ("received", source.stat().st_size, row.length)
    assert row.length == source.stat().st_size
    assert gw.handoff.ids.count(upload_id) == 1
    assert gw.store.list_objects(uploads.upload_prefix(upload_id)) == []  # no tail left
    assert _assembled_sha256(gw, row) == sha256_file(source)


def test_a_dropped_patch_keeps_what_arrived(gw: Gw, client: httpx.Client, clips: Any) -> None:
    """A PATCH whose connection drops mid-body keeps the bytes that reached the gateway (a
    part, maybe a tail), HEAD reports only those, the hold is released, and the upload resumes
    from that offset to the source's SHA-256."""
    source = clips.medium()
    data = source.read_bytes()
    who = creator()
    token = gw.token(who)
    url = create(client, gw, token, len(data)).headers["location"]
    upload_id = url.rsplit("/", 1)[1]
    sent = PART_BYTES + MIB

    class Dropped(Exception):
        pass

    def body() -> Iterator[bytes]:
        for start in range(0, sent, MIB // 4):
            yield data[start : min(start + MIB // 4, sent)]
        # The first part is committed before the connection goes: what HEAD must keep.
        wait_for(lambda: gw.row(upload_id).parts_bytes == PART_BYTES, "the first part")  # type: ignore[union-attr]
        raise Dropped

    headers = auth(
        token, **{"Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"}
    )
    with pytest.raises(Dropped):
        client.patch(url, headers=headers, content=body())
    wait_for(lambda: not _held(gw, upload_id), "the dropped PATCH to release the upload")
    offset = int(client.head(url, headers=auth(token)).headers["upload-offset"])
    row = gw.row(upload_id)
    assert row is not None and offset == row.parts_bytes + row.tail_size
    assert PART_BYTES <= offset <= sent
    rest = patch(client, url, token, offset, data[offset:])
    assert rest.status_code == 204, rest.text
    row = gw.row(upload_id)
    assert row is not None and row.state == "received"
    assert _assembled_sha256(gw, row) == sha256_file(source)


def test_no_token_or_secret_in_the_logs(gw: Gw, client: httpx.Client, clips: Any) -> None:
    """The gateway's log events (creation, PATCH, refusals) never carry the bearer token,
    the Authorization header or the signing secret."""
    from structlog.testing import capture_logs

    who = creator()
    token = gw.token(who)
    data = clips.valid().read_bytes()
    with capture_logs() as events:
        url = create(client, gw, token, len(data)).headers["location"]
        assert patch(client, url, token, 0, data).status_code == 204
        assert patch(client, url, "forged." + token[7:], 0, b"x").status_code == 401
        assert client.head(url, headers=auth(token)).status_code == 200
    names = {e["event"] for e in events}
    assert {"upload_created", "upload_patched", "upload_received", "request_refused"} <= names
    text = repr(events)
    assert token not in text and SECRET not in text
    assert token.split(".")[2] not in text  # not even the signature
    assert "authorization" not in text.lower()


def test_a_started_gateway_masks_its_secret_in_log_lines(tmp_path: Path) -> None:
    """`reelflow gateway` registers REELFLOW_GATEWAY_SECRET with the log redactor when it
    starts: a log line that carries the secret's value (here the path of a refused request)
    comes out of the process with the value masked."""
    setup = GatewaySetup(home=tmp_path / "home")
    with setup.process("masking") as gw:
        reply = httpx.head(
            f"{gw.uploads_url}{setup.secret}",
            headers={"Tus-Resumable": "1.0.0"},
            timeout=REQUEST_TIMEOUT_S,
        )
        assert reply.status_code == 401
    log = gw.log_path.read_text(errors="replace")
    refused = [line for line in log.splitlines() if "request_refused" in line]
    assert len(refused) == 1, log
    assert f"/uploads/{REDACTED}" in refused[0]
    assert setup.secret not in log


# --- the CLI --------------------------------------------------------------------------------------


def _cli(args: list[str], tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("REELFLOW_")}
    return subprocess.run(
        [str(BIN / "reelflow"), *args],
        env={**base, "REELFLOW_HOME": str(tmp_path / "home"), **env},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_token_prints_one_verifiable_line(tmp_path: Path) -> None:
    """`reelflow gateway token SUBJECT --account ... --ttl --max-size` prints one line: a
    token the gateway verifies, with those claims."""
    done = _cli(
        ["gateway", "token", "alice", "--account", "main", "--account", "alt",
         "--ttl", "600", "--max-size", "1000"],
        tmp_path,
        REELFLOW_GATEWAY_SECRET=SECRET,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 1
    claims = verify(SECRET, lines[0], now=datetime.now(UTC))
    assert (claims.subject, claims.accounts, claims.max_size) == ("alice", ("main", "alt"), 1000)
    assert timedelta(seconds=590) < claims.expires_at - datetime.now(UTC) <= timedelta(seconds=600)
    assert SECRET not in done.stdout + done.stderr


@pytest.mark.parametrize("secret", [None, "too-short"])
def test_cli_gateway_refuses_to_start_without_a_secret(tmp_path: Path, secret: str | None) -> None:
    """`reelflow gateway` without REELFLOW_GATEWAY_SECRET of 32 bytes: one line, exit 2."""
    env = {} if secret is None else {"REELFLOW_GATEWAY_SECRET": secret}
    done = _cli(["gateway", "--port", "0"], tmp_path, **env)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert "REELFLOW_GATEWAY_SECRET" in lines[0]
    assert secret is None or secret not in lines[0]
