"""A tus upload that names an account ends as one published post in the TikTok sandbox.

Every part is real and the gateway is a black box: the project's TikTok sandbox serves HTTP on
127.0.0.1, the account is added the way an operator adds one (``reelflow accounts add --code``,
exchanging a sandbox authorization code over HTTP), ``reelflow gateway`` runs as its own process
(tests/support/gateway.py) on moto's S3 and a SQLite catalog, and tuspy uploads a real ffmpeg
clip in several checksummed PATCHes. With no Prefect server the gateway hands the upload to a
``reelflow ingest --upload`` child it starts itself, which stores the video and publishes it.
What the test reads back: the ``gateway_upload``, ``media`` and ``tiktok_publish`` rows (plain
SQL), the stored object (hashed here) and the sandbox's admin ``/_sandbox/stats``.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from sqlalchemy import text
from tusclient import client as tus_client

from reelflow.tiktok.sandbox import RunningSandbox
from storage.base import ObjectStore
from storage.catalog import make_engine
from storage.runtime import open_store
from storage.s3 import make_s3_client
from tests.support.catalog_rows import catalog_row
from tests.support.files import sha256_file
from tests.support.gateway import GatewayProcess, GatewaySetup, auth
from tests.support.prefect_server import BIN, REPO
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

MIB = 2**20
PART_BYTES = 5 * MIB  # the gateway's part size (REELFLOW_GATEWAY_PART_SIZE_BYTES)
CHUNK_BYTES = 4 * MIB  # each tus PATCH: not a multiple of the part, so tails are written and read
ACCOUNT = "studio"
OWNER = "creator-publish"
CAPTION = "first light over the harbour #reelflow"
REQUEST_TIMEOUT_S = 30.0
CLI_TIMEOUT_S = 60.0
# From the last byte: a child process that starts its own Prefect API, validates, thumbnails,
# stores, then uploads to the sandbox and polls its status; ~30-60 s on 2 cores.
PUBLISHED_TIMEOUT_S = 240.0
UPLOAD_TERMINAL = {"stored", "failed", "cancelled", "expired"}
PUBLISH_TERMINAL = {"published", "sent_to_inbox", "failed"}


# ----- fixtures ---------------------------------------------------------------------------------


@pytest.fixture
def setup(tmp_path: Path, s3_server: Any, bucket: str, sandbox: RunningSandbox) -> GatewaySetup:
    """Gateways (and their pipeline children, which inherit this environment) on moto's S3,
    a SQLite catalog under the home, and the sandbox as TikTok's API."""
    return GatewaySetup(
        home=tmp_path / "home",
        store_url=f"s3://{bucket}/media",
        s3_endpoint_url=s3_server.endpoint_url,
        extra_env={
            "REELFLOW_GATEWAY_PART_SIZE_BYTES": str(PART_BYTES),
            "REELFLOW_TIKTOK_API_BASE": sandbox.base_url,
        },
    )


@pytest.fixture
def gateway(setup: GatewaySetup) -> Iterator[GatewayProcess]:
    """One gateway, stopped after the test with every pipeline run it started."""
    with setup.running("gw") as gw:
        yield gw


# ----- helpers ----------------------------------------------------------------------------------


def add_account_with_cli(setup: GatewaySetup, sandbox: RunningSandbox, name: str) -> str:
    """A new sandbox creator, added to the gateway's catalog by ``reelflow accounts add --code``
    (the code exchanged over HTTP, the tokens encrypted with the home's key); its open_id."""
    reply = httpx.post(
        f"{sandbox.base_url}/_sandbox/accounts", json={"name": name}, timeout=REQUEST_TIMEOUT_S
    )
    assert reply.status_code == 200, reply.text
    created = reply.json()
    done = subprocess.run(
        [str(BIN / "reelflow"), "accounts", "add", name, "--code", created["auth_code"]],
        env=setup.env(),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    open_id: str = created["open_id"]
    return open_id


def store_of(setup: GatewaySetup) -> ObjectStore:
    settings = setup.settings()
    s3 = make_s3_client(endpoint_url=setup.s3_endpoint_url)
    return open_store(settings.resolved_store_url, s3_client=s3)


def hash_object(store: ObjectStore, key: str) -> str:
    size = store.size(key)
    assert size is not None, f"{key} is not in the store"
    h = hashlib.sha256()
    for start in range(0, size, PART_BYTES):
        h.update(store.read_range(key, start, min(PART_BYTES, size - start)))
    return h.hexdigest()


def database_url(setup: GatewaySetup) -> str:
    url: str = setup.settings().resolved_database_url
    return url


def publish_rows(setup: GatewaySetup, media_id: str) -> list[dict[str, Any]]:
    """The ``tiktok_publish`` rows of a media, read with plain SQL (the ledger is the product's)."""
    engine = make_engine(database_url(setup))
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text("SELECT * FROM tiktok_publish WHERE media_id = :m"), {"m": media_id}
            )
            return [dict(row._mapping) for row in rows]
    finally:
        engine.dispose()


def sandbox_stats(sandbox: RunningSandbox) -> dict[str, Any]:
    reply = httpx.get(f"{sandbox.base_url}/_sandbox/stats", timeout=REQUEST_TIMEOUT_S)
    assert reply.status_code == 200, reply.text
    stats: dict[str, Any] = reply.json()
    return stats


def logs(setup: GatewaySetup) -> str:
    """The tail of the gateway's and its runs' logs, for a failure message."""
    tails = [
        f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}"
        for log in sorted(setup.home.rglob("*.log"))
    ]
    return "\n".join(tails)


# ----- the test ---------------------------------------------------------------------------------


def test_tus_upload_with_account_metadata_ends_as_one_published_post(
    setup: GatewaySetup, gateway: GatewayProcess, sandbox: RunningSandbox, clips: Any
) -> None:
    """tuspy uploads a clip with account/caption/privacy/mode metadata in several PATCHes; the
    gateway's own run stores it (SHA-256 = the file's) and publishes it: the ledger says
    PUBLISH_COMPLETE, the sandbox holds exactly one post, of those bytes, with that caption.
    Another creator cannot see the upload (404), even with a token for the same account."""
    open_id = add_account_with_cli(setup, sandbox, ACCOUNT)
    clip: Path = clips.medium()
    size = clip.stat().st_size
    assert size > 2 * CHUNK_BYTES, size  # several PATCHes
    sha = sha256_file(clip)
    token = setup.token(OWNER, accounts=(ACCOUNT,))

    uploader = tus_client.TusClient(
        gateway.uploads_url, headers={"Authorization": f"Bearer {token}"}
    ).uploader(
        file_path=str(clip),
        chunk_size=CHUNK_BYTES,
        upload_checksum=True,
        metadata={
            "filename": "harbour.mp4",
            "filetype": "video/mp4",
            "account": ACCOUNT,
            "caption": CAPTION,
            "privacy_level": "SELF_ONLY",
            "mode": "direct",
            # Post options as the upload page sends them ("true"/"false"; empty = the creator's).
            "disable_comment": "true",
            "disable_duet": "",
            "brand_organic_toggle": "true",
            "brand_content_toggle": "false",
        },
    )
    patches = 0
    while uploader.offset < size:
        uploader.upload_chunk()
        patches += 1
    assert patches == -(-size // CHUNK_BYTES) and uploader.offset == size
    url = uploader.url
    assert url is not None
    upload_id = urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1]

    # Ownership: the creator sees the upload; another creator, even one allowed the same
    # account, is told it does not exist.
    mine = httpx.head(url, headers=auth(token), timeout=REQUEST_TIMEOUT_S)
    assert mine.status_code == 200 and int(mine.headers["Upload-Offset"]) == size, mine.headers
    other = setup.token("creator-other", accounts=(ACCOUNT,))
    theirs = httpx.head(url, headers=auth(other), timeout=REQUEST_TIMEOUT_S)
    assert theirs.status_code == 404, (theirs.status_code, theirs.text)

    # One deadline for both waits: stored, then the publish settled.
    deadline = time.monotonic() + PUBLISHED_TIMEOUT_S
    db = database_url(setup)

    def settled_upload() -> dict[str, Any] | None:
        row = catalog_row(db, "gateway_upload", "id", upload_id)
        return row if row is not None and row["state"] in UPLOAD_TERMINAL else None

    row = wait_for(
        settled_upload,
        f"upload {upload_id} to be stored",
        deadline - time.monotonic(),
        1.0,
        detail=lambda: f"{catalog_row(db, 'gateway_upload', 'id', upload_id)}\n{logs(setup)}",
    )
    assert row["state"] == "stored", f"{row}\n{logs(setup)}"
    media_id = row["media_id"]

    def settled_publish() -> list[dict[str, Any]] | None:
        rows = publish_rows(setup, media_id)
        return rows if rows and all(r["status"] in PUBLISH_TERMINAL for r in rows) else None

    published = wait_for(
        settled_publish,
        f"the publish of media {media_id}",
        max(deadline - time.monotonic(), 1.0),
        1.0,
        detail=lambda: f"{publish_rows(setup, media_id)}\n{logs(setup)}",
    )

    # The stored video is the file, byte for byte.
    media = catalog_row(db, "media", "media_id", media_id)
    assert media is not None, row
    assert media["sha256"] == row["sha256"] == sha, (media, row)
    assert hash_object(store_of(setup), media["video_key"]) == sha

    # The ledger: one publish, complete, to the account, as the metadata asked.
    assert len(published) == 1, published
    ledger = published[0]
    assert (ledger["status"], ledger["tiktok_status"]) == ("published", "PUBLISH_COMPLETE"), (
        f"{ledger}\n{logs(setup)}"
    )
    assert (ledger["account"], ledger["mode"]) == (ACCOUNT, "direct"), ledger
    options = json.loads(ledger["options_json"])
    assert options.get("caption") == CAPTION and options.get("privacy_level") == "SELF_ONLY"
    assert (options.get("disable_comment"), options.get("brand_organic_toggle")) == (True, True)

    # The sandbox: exactly one post, that publish, of those bytes, with that caption.
    stats = sandbox_stats(sandbox)
    assert stats["posts"] == 1, stats
    assert list(stats["publishes"]) == [ledger["publish_id"]], stats["publishes"]
    post = stats["publishes"][ledger["publish_id"]]
    assert post["status"] == "PUBLISH_COMPLETE", post
    assert (post["open_id"], post["mode"], post["source"]) == (open_id, "direct", "FILE_UPLOAD")
    flags = post["post_flags"]
    assert (flags["disable_comment"], flags["disable_duet"]) == (True, False), flags
    assert (flags["brand_organic_toggle"], flags["brand_content_toggle"]) == (True, False), flags
    assert post["title"] == CAPTION, post
    assert post["privacy_level"] == "SELF_ONLY", post
    assert (post["video_size"], post["sha256"]) == (size, sha), post
