"""Independent tus clients against real ``reelflow gateway`` processes: kills and scale-out.

Every part is real: the gateway runs as its own process (``reelflow gateway``, started by
tests/support/gateway.py), S3 is moto's server on 127.0.0.1, the catalog is SQLite or the
machine's PostgreSQL, the clips are real MP4s made by ffmpeg, and the clients are the ones
creators use: tuspy (PyPI; the only one that sends ``Upload-Checksum``) and tus-js-client under
Node (npm, tests/js). Faults are real too: a gateway is SIGKILLed while a PATCH body is still
arriving. The only hand-written client is a raw socket PATCH whose body pauses half-way, which
no real client does on purpose and which a kill "mid-PATCH" needs.

What must hold each time: the offset a (new) gateway reports counts only durable bytes and loses
none that were acknowledged, any instance resumes any upload, concurrent PATCHes to one upload
give one 204 and one 409/423, and the stored video's SHA-256 equals the source's.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from tusclient import client as tus_client

from storage.base import ObjectStore
from storage.runtime import open_store
from storage.s3 import make_s3_client
from tests.support.catalog_rows import catalog_row
from tests.support.files import sha256_file
from tests.support.gateway import GatewayProcess, GatewaySetup, auth
from tests.support.prefect_server import REPO
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

MIB = 2**20
PART_BYTES = 8 * MIB  # the gateway's part size here (REELFLOW_GATEWAY_PART_SIZE_BYTES)
CHUNK_BYTES = 5 * MIB  # each tus PATCH; not a multiple of the part, so tails are exercised
CLIP_MIN_BYTES = 24 * MIB
LOCK_TTL_S = 2  # a killed instance's hold lapses this fast (the lease code may free it sooner)
# tuspy retries a refused PATCH (423 while a dead instance's hold lapses) after re-reading HEAD.
TUSPY_RETRIES = 15
TUSPY_RETRY_DELAY_S = 1
REQUEST_TIMEOUT_S = 30.0
# The embedded hand-off validates, thumbnails and stores the video in the gateway process, with
# an ephemeral Prefect API of its own: ~20-40 s on 2 cores.
STORED_TIMEOUT_S = 240.0
NODE_TIMEOUT_S = 180.0
JS_DIR = REPO / "tests" / "js"
TERMINAL_STATES = {"stored", "failed", "cancelled", "expired"}


# ----- fixtures ---------------------------------------------------------------------------------


def _setup(tmp_path: Path, s3_server: Any, bucket: str, database_url: str | None) -> GatewaySetup:
    return GatewaySetup(
        home=tmp_path / "home",
        store_url=f"s3://{bucket}/media",
        database_url=database_url,
        s3_endpoint_url=s3_server.endpoint_url,
        extra_env={
            "REELFLOW_GATEWAY_PART_SIZE_BYTES": str(PART_BYTES),
            "REELFLOW_GATEWAY_LOCK_TTL_S": str(LOCK_TTL_S),
        },
    )


@pytest.fixture
def s3_gateway_setup(tmp_path: Path, s3_server: Any, bucket: str) -> GatewaySetup:
    """Gateways on moto's S3 and one SQLite catalog."""
    return _setup(tmp_path, s3_server, bucket, None)


@pytest.fixture
def pg_gateway_setup(tmp_path: Path, s3_server: Any, bucket: str, pg_url: str) -> GatewaySetup:
    """Gateways on moto's S3 and the session's PostgreSQL catalog (scale-out)."""
    return _setup(tmp_path, s3_server, bucket, pg_url)


@pytest.fixture
def gateways() -> Iterator[list[GatewayProcess]]:
    """Every gateway a test starts goes in here, and is stopped (killed if it hangs) after,
    with the pipeline runs it started."""
    started: list[GatewayProcess] = []
    yield started
    for gw in started:
        gw.stop()
    for setup in {id(gw.setup): gw.setup for gw in started}.values():
        setup.end_runs()


def logs(gateways: list[GatewayProcess]) -> str:
    """The tail of every gateway's log (and the runs' logs), for a failure message."""
    homes = {gw.setup.home for gw in gateways}
    tails = [f"--- {gw.name}\n{gw.log_tail()}" for gw in gateways]
    for home in homes:
        for log in sorted(home.rglob("*.log")):
            if log not in {gw.log_path for gw in gateways}:
                tails.append(f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}")
    return "\n".join(tails)


@pytest.fixture
def clip(clips: Any) -> Path:
    path: Path = clips.large(CLIP_MIN_BYTES)
    return path


# ----- helpers ----------------------------------------------------------------------------------


def on(gw: GatewayProcess, upload_url: str) -> str:
    """The same upload as seen through another instance (no sticky sessions)."""
    return gw.base_url + urlsplit(upload_url).path


def head(url: str, token: str) -> httpx.Response:
    return httpx.head(url, headers=auth(token), timeout=REQUEST_TIMEOUT_S)


def offset_of(url: str, token: str) -> int:
    reply = head(url, token)
    assert reply.status_code == 200, (reply.status_code, reply.text)
    return int(reply.headers["Upload-Offset"])


def tuspy(gw: GatewayProcess, token: str) -> tus_client.TusClient:
    return tus_client.TusClient(gw.uploads_url, headers={"Authorization": f"Bearer {token}"})


def metadata(name: str) -> dict[str, str]:
    return {"filename": name, "filetype": "video/mp4"}


def store_of(setup: GatewaySetup) -> ObjectStore:
    settings = setup.settings()
    url: str = settings.resolved_store_url
    s3 = make_s3_client(endpoint_url=setup.s3_endpoint_url) if url.startswith("s3:") else None
    return open_store(url, s3_client=s3)


def staged_parts_bytes(store: ObjectStore, upload_id: str) -> int:
    """Bytes in the parts the store holds for a tus upload's staged multipart upload."""
    pending = [p for p in store.list_uploads(f"incoming/{upload_id}/")]
    assert len(pending) == 1, pending
    parts = store.list_parts(pending[0].key, pending[0].upload_id)
    return sum(p.size for p in parts.values())


def hash_object(store: ObjectStore, key: str) -> str:
    size = store.size(key)
    assert size is not None, f"{key} is not in the store"
    h = hashlib.sha256()
    for start in range(0, size, PART_BYTES):
        h.update(store.read_range(key, start, min(PART_BYTES, size - start)))
    return h.hexdigest()


def upload_row(setup: GatewaySetup, upload_id: str) -> dict[str, Any] | None:
    """The catalog's gateway_upload row, read with plain SQL (the gateway is a black box)."""
    return catalog_row(setup.settings().resolved_database_url, "gateway_upload", "id", upload_id)


def media_row(setup: GatewaySetup, media_id: str) -> dict[str, Any] | None:
    return catalog_row(setup.settings().resolved_database_url, "media", "media_id", media_id)


def stored_sha256(setup: GatewaySetup, upload_url: str, gateways: list[GatewayProcess]) -> str:
    """SHA-256 of the video the upload became: the gateway hands the received upload to the
    pipeline (embedded default: an ``ingest-video`` run it starts itself), the row ends
    'stored' with a Media row, and the stored object is read back and hashed here."""
    upload_id = urlsplit(upload_url).path.rstrip("/").rsplit("/", 1)[-1]
    store = store_of(setup)

    def settled() -> dict[str, Any] | None:
        row = upload_row(setup, upload_id)
        return row if row is not None and row["state"] in TERMINAL_STATES else None

    row = wait_for(
        settled,
        f"upload {upload_id} to be stored",
        STORED_TIMEOUT_S,
        1.0,
        detail=lambda: f"{upload_row(setup, upload_id)}\n{logs(gateways)}",
    )
    assert row["state"] == "stored", f"{row}\n{logs(gateways)}"
    media = media_row(setup, row["media_id"])
    assert media is not None, row
    # Stored where it was received (no server-side copy): incoming/<id>/video.
    assert media["video_key"] == f"incoming/{upload_id}/video", media
    digest = hash_object(store, media["video_key"])
    assert digest == media["sha256"] == row["sha256"], (digest, media, row)
    # Nothing staged is left pending once the video is stored.
    assert store.list_uploads(f"incoming/{upload_id}/") == []
    return digest


class SlowPatch:
    """A PATCH whose body arrives in pieces the test controls (raw HTTP/1.1 on a socket).

    ``send(n)`` sends the next ``n`` bytes of the body and returns; ``finish()`` sends the rest
    and reads the reply. A server that answers early (423/409) and closes is handled: the reply
    is read even when the rest of the body can no longer be sent.
    """

    def __init__(
        self,
        url: str,
        token: str,
        body: bytes,
        *,
        offset: int,
        checksum: bool,
    ) -> None:
        parts = urlsplit(url)
        self.body = body
        self.sent = 0
        self.sock = socket.create_connection(
            (parts.hostname, parts.port), timeout=REQUEST_TIMEOUT_S
        )
        lines = [
            f"PATCH {parts.path} HTTP/1.1",
            f"Host: {parts.netloc}",
            f"Authorization: Bearer {token}",
            "Tus-Resumable: 1.0.0",
            "Content-Type: application/offset+octet-stream",
            f"Upload-Offset: {offset}",
            f"Content-Length: {len(body)}",
            "Connection: close",
        ]
        if checksum:
            digest = base64.b64encode(hashlib.sha1(body).digest()).decode()
            lines.append(f"Upload-Checksum: sha1 {digest}")
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())

    def send(self, n: int) -> None:
        self.sock.sendall(self.body[self.sent : self.sent + n])
        self.sent += n

    def finish(self) -> tuple[int, dict[str, str]]:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.sock.sendall(self.body[self.sent :])
            self.sent = len(self.body)
        return self.reply()

    def reply(self) -> tuple[int, dict[str, str]]:
        data = b""
        with contextlib.suppress(ConnectionResetError):
            while b"\r\n\r\n" not in data:
                block = self.sock.recv(65536)
                if not block:
                    break
                data += block
        head_text = data.split(b"\r\n\r\n", 1)[0].decode("latin-1")
        assert head_text.startswith("HTTP/1.1 "), f"no HTTP reply: {data[:200]!r}"
        status_line, *header_lines = head_text.split("\r\n")
        headers = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return int(status_line.split()[1]), headers

    def close(self) -> None:
        self.sock.close()


def read_range(path: Path, start: int, length: int) -> bytes:
    with path.open("rb") as f:
        f.seek(start)
        return f.read(length)


# ----- tuspy: checksums, resume after a SIGKILL mid-PATCH --------------------------------------


@pytest.mark.parametrize(
    "in_flight_checksum",
    [True, pytest.param(False, marks=pytest.mark.long)],  # the streamed one in `make chaos`
    ids=["checksummed", "streamed"],
)
def test_tuspy_resumes_on_a_new_gateway_after_sigkill_mid_patch(
    s3_gateway_setup: GatewaySetup,
    gateways: list[GatewayProcess],
    clip: Path,
    in_flight_checksum: bool,
) -> None:
    """tuspy sends two checksummed 5 MiB chunks; the gateway is SIGKILLed while a third PATCH's
    body is half-way in; a new gateway reports only the durable bytes (all acknowledged ones,
    plus the whole parts the streamed PATCH completed; a checksummed PATCH commits nothing before
    its body is verified), tuspy resumes there and finishes, and the stored SHA-256 is the
    source's."""
    setup = s3_gateway_setup
    size = clip.stat().st_size
    token = setup.token("creator-kill")
    first = setup.process("first")
    gateways.append(first)
    first.start()

    uploader = tuspy(first, token).uploader(
        file_path=str(clip),
        chunk_size=CHUNK_BYTES,
        upload_checksum=True,
        metadata=metadata("kill-mid-patch.mp4"),
    )
    uploader.upload_chunk()
    uploader.upload_chunk()
    acknowledged = 2 * CHUNK_BYTES
    assert uploader.offset == acknowledged
    url = uploader.url
    assert url is not None

    # The third PATCH asks for 8 MiB and sends 7: streamed, the bytes up to the next part
    # boundary (16 MiB) become a durable part; the last 1 MiB is only in the dead process.
    in_flight = SlowPatch(
        url,
        token,
        read_range(clip, acknowledged, 8 * MIB),
        offset=acknowledged,
        checksum=in_flight_checksum,
    )
    in_flight.send(7 * MIB)
    if in_flight_checksum:
        expected = acknowledged
    else:
        expected = (acknowledged + 7 * MIB) // PART_BYTES * PART_BYTES
        # HEAD takes no hold, so the first gateway shows the part land while the body is open.
        wait_for(
            lambda: offset_of(url, token) == expected,
            f"the streamed PATCH to reach {expected}",
            detail=lambda: offset_of(url, token),
        )
    first.kill()
    in_flight.close()

    second = setup.process("second")
    gateways.append(second)
    second.start()
    url2 = on(second, url)
    reply = head(url2, token)
    assert reply.status_code == 200, reply.text
    assert int(reply.headers["Upload-Length"]) == size
    assert int(reply.headers["Upload-Offset"]) == expected
    # Only durable bytes: whole parts in the store, plus at most one tail object below a part.
    parts_bytes = staged_parts_bytes(store_of(setup), urlsplit(url).path.rsplit("/", 1)[-1])
    assert parts_bytes <= expected < parts_bytes + PART_BYTES

    resumed = tuspy(second, token).uploader(
        file_path=str(clip),
        url=url2,
        chunk_size=CHUNK_BYTES,
        upload_checksum=True,
        retries=TUSPY_RETRIES,
        retry_delay=TUSPY_RETRY_DELAY_S,
    )
    assert resumed.offset == expected
    resumed.upload()
    assert offset_of(url2, token) == size
    assert stored_sha256(setup, url2, gateways) == sha256_file(clip)


# ----- tus-js-client under Node: parallelUploads (concatenation) --------------------------------


def run_node_upload(
    gw: GatewayProcess, token: str, clip: Path, *, parallel: int, chunk: int
) -> dict[str, Any]:
    node = shutil.which("node")
    if node is None or not (JS_DIR / "node_modules" / "tus-js-client").is_dir():
        pytest.fail("tus-js-client is not installed: run `make js` (npm ci in tests/js)")
    cmd = [
        node,
        str(JS_DIR / "upload.mjs"),
        "--endpoint", gw.uploads_url,
        "--token", token,
        "--file", str(clip),
        "--parallel", str(parallel),
        "--chunk-size", str(chunk),
        "--meta", f"filename={clip.name}",
        "--meta", "filetype=video/mp4",
    ]  # fmt: skip
    try:
        done = subprocess.run(
            cmd, cwd=JS_DIR, capture_output=True, text=True, timeout=NODE_TIMEOUT_S
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"tus-js-client did not finish in {NODE_TIMEOUT_S}s:\n{gw.log_tail()}")
    lines = done.stdout.strip().splitlines()
    assert lines, f"no output from upload.mjs (exit {done.returncode}): {done.stderr[-2000:]}"
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def test_tus_js_client_parallel_uploads_store_the_same_bytes(
    s3_gateway_setup: GatewaySetup, gateways: list[GatewayProcess], clip: Path
) -> None:
    """tus-js-client with parallelUploads: 2 sends two partial uploads and a final
    concatenation; the stored video's SHA-256 is the source's."""
    setup = s3_gateway_setup
    token = setup.token("creator-js")
    gw = setup.process("js")
    gateways.append(gw)
    gw.start()
    result = run_node_upload(gw, token, clip, parallel=2, chunk=CHUNK_BYTES)
    assert result["ok"], f"{result}\n{gw.log_tail()}"
    assert result["bytes"] == clip.stat().st_size
    reply = head(result["url"], token)
    assert reply.status_code == 200, reply.text
    assert reply.headers.get("Upload-Concat", "").startswith("final"), dict(reply.headers)
    assert stored_sha256(setup, result["url"], gateways) == sha256_file(clip)


# ----- scale-out: two gateways on PostgreSQL, PATCHes alternate, one is killed --------------------


@pytest.mark.postgres
def test_two_gateways_on_postgres_share_one_upload_and_survive_a_kill(
    pg_gateway_setup: GatewaySetup, gateways: list[GatewayProcess], clip: Path
) -> None:
    """Two gateway processes on one PostgreSQL catalog: tuspy's PATCHes alternate between them
    (a client per chunk, no sticky session); two PATCHes at once to one upload give one 204 and
    one 409/423 at once; the instance holding a PATCH is SIGKILLed half-way through its body and
    the other finishes the upload; the stored SHA-256 is the source's."""
    setup = pg_gateway_setup
    size = clip.stat().st_size
    token = setup.token("creator-scale")
    a, b = setup.process("a"), setup.process("b")
    gateways += [a, b]
    a.start()
    b.start()

    created = tuspy(a, token).uploader(
        file_path=str(clip),
        chunk_size=CHUNK_BYTES,
        upload_checksum=True,
        metadata=metadata("scale-out.mp4"),
    )
    created.upload_chunk()
    url = created.url
    assert url is not None
    # Chunks 2 and 3 alternate B, A: each through a fresh tuspy client of that instance, which
    # first asks that instance for the offset (HEAD), as a client resuming elsewhere does.
    at = CHUNK_BYTES
    for gw in (b, a):
        step = tuspy(gw, token).uploader(
            file_path=str(clip), url=on(gw, url), chunk_size=CHUNK_BYTES, upload_checksum=True
        )
        assert step.offset == at
        step.upload_chunk()
        at += CHUNK_BYTES
        assert step.offset == at
    assert offset_of(on(a, url), token) == offset_of(on(b, url), token) == at

    # Two PATCHes at once at the same offset, one per instance: B's body is half-way in (its
    # hold taken) when A's arrives whole; A must refuse at once, then B completes with 204.
    chunk = read_range(clip, at, CHUNK_BYTES)
    slow = SlowPatch(on(b, url), token, chunk, offset=at, checksum=True)
    slow.send(CHUNK_BYTES // 2)
    rival = httpx.patch(
        on(a, url),
        content=chunk,
        headers=auth(token)
        | {
            "Content-Type": "application/offset+octet-stream",
            "Upload-Offset": str(at),
            "Upload-Checksum": "sha1 " + base64.b64encode(hashlib.sha1(chunk).digest()).decode(),
        },
        timeout=REQUEST_TIMEOUT_S,
    )
    status, headers = slow.finish()
    slow.close()
    assert sorted([status, rival.status_code])[0] == 204, (status, rival.status_code, rival.text)
    assert sorted([status, rival.status_code])[1] in (409, 423), (status, rival.status_code)
    at += CHUNK_BYTES
    assert offset_of(on(a, url), token) == at

    # A takes the next PATCH and is SIGKILLed half-way through its body; B finishes the upload
    # (its PATCHes are refused with 423 until A's hold lapses; tuspy retries after a HEAD).
    doomed = SlowPatch(
        on(a, url), token, read_range(clip, at, size - at), offset=at, checksum=False
    )
    doomed.send(2 * MIB)
    a.kill()
    doomed.close()
    finisher = tuspy(b, token).uploader(
        file_path=str(clip),
        url=on(b, url),
        chunk_size=CHUNK_BYTES,
        upload_checksum=True,
        retries=TUSPY_RETRIES,
        retry_delay=TUSPY_RETRY_DELAY_S,
    )
    assert at <= finisher.offset <= at + 2 * MIB
    finisher.upload()
    assert offset_of(on(b, url), token) == size
    assert stored_sha256(setup, on(b, url), gateways) == sha256_file(clip)
