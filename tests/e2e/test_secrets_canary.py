"""Canary test: a distinct canary in every secret, then ingest + publish, a failure, a kill and
a gateway upload (``reelflow gateway`` with a canary REELFLOW_GATEWAY_SECRET, a minted token,
a tus upload, the hand-off event, the run to stored); no canary, TikTok token or gateway token
may appear in Prefect's database (flow run parameters, logs, events, artifacts), PREFECT_HOME
(persisted results), the catalog, the store's objects, or any process's stdout/stderr or log."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from reelflow.planning import MIB
from tests.support.prefect_server import PrefectServer
from tests.support.waiting import wait_for

RUN_TIMEOUT_S = 120
SLOW_BLOCK_BYTES = 64 * 1024
SLOW_BLOCK_DELAY_S = 0.05  # ~10 s for a 12 MiB clip: time to kill it mid-upload
GATEWAY_CHUNK_BYTES = 3 * MIB  # several PATCHes, none part-aligned (tails are written)
EVENT_RECEIVED = "reelflow.upload.received"  # the gateway's hand-off event


def _canary(what: str) -> str:
    return f"cnry{what}{uuid.uuid4().hex[:10]}"


class _SourceHandler(BaseHTTPRequestHandler):
    """Serves files by name with Range support; ``/slow/`` paths trickle their bytes."""

    files: dict[str, Path] = {}

    def log_message(self, *args: Any) -> None:  # keep the test's stderr clean
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        path = self.path.split("?", 1)[0]
        name = path.rsplit("/", 1)[-1]
        file = self.files.get(name)
        if file is None:
            self.send_error(404)
            return
        size = file.stat().st_size
        start, end = 0, size - 1
        match = re.match(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if match:
            start = int(match.group(1))
            end = min(int(match.group(2)) if match.group(2) else size - 1, size - 1)
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("ETag", f'"{file.stat().st_mtime_ns}"')
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        slow = path.startswith("/slow/") and end - start > MIB
        with file.open("rb") as fh:
            fh.seek(start)
            remaining = end - start + 1
            while remaining > 0:
                block = fh.read(min(SLOW_BLOCK_BYTES, remaining))
                if not block:
                    break
                try:
                    self.wfile.write(block)
                except (BrokenPipeError, ConnectionResetError):
                    return
                remaining -= len(block)
                if slow:
                    time.sleep(SLOW_BLOCK_DELAY_S)


@pytest.fixture
def source_server(clips: Any) -> Iterator[str]:
    _SourceHandler.files = {"clip.mp4": clips.valid(), "big.mp4": clips.medium()}
    server = ThreadingHTTPServer(("127.0.0.1", 0), _SourceHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _reelflow(*args: str) -> list[str]:
    return [str(Path(sys.executable).parent / "reelflow"), *args]


def _dump_sqlite(path: Path) -> str:
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        return "\n".join(con.iterdump())
    finally:
        con.close()


def _dump_postgres(url: str) -> str:
    import psycopg

    out = []
    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://")) as conn:
        tables = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchall()
        for (table,) in tables:
            for row in conn.execute(f'SELECT * FROM "{table}"'):  # noqa: S608 - own test DB
                out.append(f"{table}: {row!r}")
    return "\n".join(out)


def _files_text(root: Path) -> Iterator[tuple[Path, str]]:
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            if path.suffix in (".db", ".db-wal", ".db-shm") or path.name.endswith(".db"):
                continue  # dumped table by table instead
            yield path, path.read_bytes().decode("utf-8", "replace")


def _gateway_run(
    server: PrefectServer,
    env_vars: dict[str, str],
    secret: str,
    home: Path,
    pg_url: str,
    outputs: list[str],
) -> tuple[str, str]:
    """``reelflow gateway`` on the test's Prefect server, store and catalog, signing with the
    canary ``secret``: a token minted by the CLI, a tuspy upload in checksummed PATCHes, the
    hand-off event the gateway posts, then the run the deployment's trigger would start (the
    same command, here started by the test with the trigger's parameters) until the upload is
    stored. Returns the token and the upload's id. The gateway's log is under ``home``."""
    from tusclient import client as tus_client

    from tests.support.catalog_rows import catalog_row
    from tests.support.gateway import GatewaySetup

    setup = GatewaySetup(
        home=home,
        store_url=env_vars["REELFLOW_STORE_URL"],
        database_url=env_vars["REELFLOW_DATABASE_URL"],
        s3_endpoint_url=env_vars["REELFLOW_S3_ENDPOINT_URL"],
        secret=secret,
        extra_env={**env_vars, "PREFECT_API_URL": server.api_url},
    )
    token = setup.token("creator-canary")
    clip = _SourceHandler.files["big.mp4"]
    with setup.process("gateway-canary") as gw:
        uploader = tus_client.TusClient(
            gw.uploads_url, headers={"Authorization": f"Bearer {token}"}
        ).uploader(
            file_path=str(clip),
            chunk_size=GATEWAY_CHUNK_BYTES,
            upload_checksum=True,
            metadata={"filename": "canary.mp4", "filetype": "video/mp4"},
        )
        for _ in range(-(-clip.stat().st_size // GATEWAY_CHUNK_BYTES)):
            uploader.upload_chunk()
        assert uploader.offset == clip.stat().st_size and uploader.url is not None
        upload = uploader.url.rstrip("/").rsplit("/", 1)[-1]
        done = subprocess.run(
            _reelflow("ingest", "--upload", upload, "--json"),
            env=server.env(**env_vars),
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT_S,
        )
        outputs.extend([done.stdout, done.stderr])
        assert done.returncode == 0, done.stderr[-3000:]
    row = catalog_row(pg_url, "gateway_upload", "id", upload)
    assert row is not None and row["state"] == "stored", row
    return token, upload


@pytest.mark.slow
def test_no_canary_survives_anywhere(
    s3_server: Any,
    bucket: str,
    clips: Any,
    source_server: str,
    pg_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every secret reelflow handles is planted with a canary; none is found after the runs."""
    from reelflow.tiktok.sandbox import SandboxConfig, start_sandbox
    from storage.runtime import Runtime
    from tests.support.tiktok import add_account

    canaries = {
        what: _canary(what)
        for what in ("user", "password", "token", "sig", "client", "dbpw", "webhook")
    }
    canaries["awskey"] = "AKIA" + uuid.uuid4().hex[:16].upper()
    canaries["awssecret"] = _canary("awssecret")
    canaries["secretkey"] = _canary("secretkeyxxxxxxxx")
    canaries["failtoken"] = _canary("failtoken")
    canaries["killtoken"] = _canary("killtoken")
    canaries["webhook"] += "w" * 32  # the bridge refuses secrets under 32 characters
    canaries["gwsecret"] = _canary("gwsecret") + "g" * 32  # the gateway needs >= 32 bytes
    db_url = pg_url.replace("postgres@", f"postgres:{canaries['dbpw']}@")  # trust ignores it
    home = tmp_path / "home"
    env_vars = {
        "REELFLOW_HOME": str(home),
        "REELFLOW_STORE_URL": f"s3://{bucket}/media",
        "REELFLOW_S3_ENDPOINT_URL": s3_server.endpoint_url,
        "REELFLOW_DATABASE_URL": db_url,
        "REELFLOW_TIKTOK_CLIENT_SECRET": canaries["client"],
        "REELFLOW_WEBHOOK_SECRET": canaries["webhook"],
        "REELFLOW_SECRET_KEY": canaries["secretkey"],
        "REELFLOW_SOURCE_ALLOWED_HOSTS": source_server,
        "AWS_ACCESS_KEY_ID": canaries["awskey"],
        "AWS_SECRET_ACCESS_KEY": canaries["awssecret"],
    }
    for name, value in env_vars.items():
        monkeypatch.setenv(name, value)

    base = f"http://{canaries['user']}:{canaries['password']}@{source_server}"
    outputs: list[str] = []
    (tmp_path / "prefect").mkdir()
    config = SandboxConfig(processing_delay_s=0.0, seed=99, client_secret=canaries["client"])
    with (
        PrefectServer(log_dir=tmp_path / "prefect") as server,
        start_sandbox(config, data_dir=tmp_path / "sandbox") as sb,
    ):
        env = server.env(REELFLOW_TIKTOK_API_BASE=sb.base_url, **env_vars)
        from reelflow.settings import Settings

        monkeypatch.setenv("REELFLOW_TIKTOK_API_BASE", sb.base_url)
        rt = Runtime.from_settings(Settings())
        # Stored as expired: the publish refreshes it, so the client secret is sent too.
        add_account(rt, sb, "creator", stored_expires_in=0)

        def run(*args: str) -> subprocess.CompletedProcess[str]:
            done = subprocess.run(
                _reelflow(*args), env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S
            )
            outputs.extend([done.stdout, done.stderr])
            return done

        ok = run(
            "ingest",
            f"{base}/v/clip.mp4?token={canaries['token']}&X-Amz-Signature={canaries['sig']}",
            "--account",
            "creator",
            "--json",
        )
        assert ok.returncode == 0, ok.stderr[-3000:]
        assert '"status": "PUBLISH_COMPLETE"' in ok.stdout or "PUBLISH" in ok.stdout, ok.stdout

        failed = run("ingest", f"{base}/v/missing.mp4?token={canaries['failtoken']}", "--json")
        assert failed.returncode == 2, failed.stderr[-3000:]
        assert failed.stderr.startswith("error: "), failed.stderr

        status = run("status", "--json")
        assert status.returncode == 0, status.stderr[-3000:]

        s3 = s3_server.client()
        proc = subprocess.Popen(
            _reelflow(
                "ingest",
                f"{base}/slow/big.mp4?token={canaries['killtoken']}",
                "--chunk-size",
                str(5 * MIB),
                "--concurrency",
                "1",
            ),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        try:

            def uploading() -> bool:
                assert proc.poll() is None, proc.stderr.read().decode()[-3000:]  # type: ignore[union-attr]
                ups = s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
                return any(
                    s3.list_parts(Bucket=bucket, Key=u["Key"], UploadId=u["UploadId"]).get("Parts")
                    for u in ups
                )

            wait_for(uploading, "the killed run to have a part in the store", RUN_TIMEOUT_S, 0.05)
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate(timeout=30)
            outputs.extend([out.decode(errors="replace"), err.decode(errors="replace")])

        gateway_token, gateway_upload = _gateway_run(
            server, env_vars, canaries["gwsecret"], home, pg_url, outputs
        )

        db_path = server.home / "prefect.db"

        def events_landed() -> bool:
            dump = _dump_sqlite(db_path)
            return (
                "prefect.flow-run.Completed" in dump
                and "prefect.flow-run.Failed" in dump
                and EVENT_RECEIVED in dump
                and gateway_upload in dump
            )

        # Events and logs are written by the server's services in batches: wait for them.
        wait_for(events_landed, "the runs' events in Prefect's database", 60, 0.5)
        places: dict[str, str] = {"prefect database": _dump_sqlite(db_path)}
        for root in (server.home, tmp_path / "prefect", home):
            for path, text in _files_text(root):
                places[str(path)] = text
        places["catalog"] = _dump_postgres(pg_url)
        for obj in s3.list_objects_v2(Bucket=bucket).get("Contents", []):
            body = s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
            places[f"s3://{bucket}/{obj['Key']}"] = obj["Key"] + body.decode("utf-8", "replace")
        places["stdout/stderr"] = "\n".join(outputs)
        tokens = [*sb.state._access, *sb.state._refresh]  # every token the sandbox issued

    assert "REDACTED" in places["prefect database"], "the public URL is the flow parameter"
    assert len(tokens) >= 2
    secrets = {
        **canaries,
        **{f"tiktok-token-{i}": t for i, t in enumerate(tokens)},
        "gateway-token": gateway_token,
        # The signature alone is the token's secret part (its header and claims are not).
        "gateway-token-signature": gateway_token.rsplit(".", 1)[1],
    }
    found = [
        f"{what} in {where}: …{text[max(0, text.find(secret) - 120) : text.find(secret) + 40]}…"
        for where, text in places.items()
        for what, secret in secrets.items()
        if secret in text
    ]
    assert not found, found
