"""`make demo`: run the main job on the embedded defaults and show what it produced.

Local object store and SQLite under REELFLOW_HOME, Prefect's ephemeral API (unless
PREFECT_API_URL is set), and reelflow's own TikTok sandbox started in this process: the clip is
ingested, stored, then published to a sandbox account and polled until it is live.

Then the front door: the same clip goes through a ``reelflow gateway`` child process on the
embedded defaults (no Prefect server: the gateway runs the hand-off itself), uploaded by a real
tus client (tuspy) with a token minted by ``reelflow gateway token``, and the catalog is polled
until the upload's row is ``stored``. The signing secret, when the environment has none, is
generated for the child only and never printed; the gateway is stopped on every way out.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")

# After the environment above: these load prefect, which reads it at import time.
import requests  # noqa: E402

from flows.ingest import ingest_video  # noqa: E402
from reelflow.errors import ReelflowError  # noqa: E402
from reelflow.settings import Settings  # noqa: E402
from reelflow.tiktok.sandbox import SandboxConfig, start_sandbox  # noqa: E402
from storage import gateway_uploads as uploads  # noqa: E402
from storage.accounts import save_account  # noqa: E402
from storage.catalog import Catalog, make_engine  # noqa: E402
from storage.crypto import secret_box  # noqa: E402

DEMO_ACCOUNT = "demo-creator"
DEMO_SUBJECT = "demo-creator"  # the gateway token's subject: the uploads' owner
# The gateway's CLI imports Prefect and opens the catalog before it listens: ~3-8 s on 2 cores.
GATEWAY_STARTUP_TIMEOUT_S = 90.0
GATEWAY_STOP_GRACE_S = 10.0  # SIGTERM lets uvicorn drain; past this the group is killed
TOKEN_TIMEOUT_S = 60.0
# The embedded hand-off starts a `reelflow ingest --upload` child with an ephemeral Prefect API
# of its own, then validates, thumbnails and stores: ~20-40 s on 2 cores.
STORED_TIMEOUT_S = 180.0
POLL_INTERVAL_S = 0.25
# The sample (a few MiB) takes under 5 s over loopback; room for a larger clip of one's own.
UPLOAD_TIMEOUT_S = 300.0
# Several PATCHes for the 20 s sample (a few MiB), so the report shows a resumable upload.
TUS_CHUNK_BYTES = 1024 * 1024
SECRET_BYTES = 48  # the gateway refuses secrets under 32 bytes
# Rows that will never become stored.
_GIVEN_UP = (uploads.FAILED, uploads.CANCELLED, uploads.EXPIRED)


class DemoGatewayError(ReelflowError):
    """The demo's gateway step did not end with the clip stored (the message says where)."""


@dataclass(frozen=True)
class GatewayReport:
    """What the gateway step saw: enough for the printed report and for a test."""

    upload_id: str
    size_bytes: int
    patches: int
    media_id: str
    sha256: str  # the media row's
    file_sha256: str
    last_byte_to_stored_s: float
    gateway_pid: int
    log_path: Path


def main(argv: list[str]) -> int:
    clip = Path(argv[0] if argv else ".reelflow/sample.mp4").resolve()
    settings = Settings()
    sandbox_dir = settings.home / "sandbox"
    with start_sandbox(SandboxConfig(processing_delay_s=1.0), data_dir=sandbox_dir) as sandbox:
        os.environ["REELFLOW_TIKTOK_API_BASE"] = sandbox.base_url
        creator = requests.post(
            f"{sandbox.base_url}/_sandbox/accounts",
            json={"name": DEMO_ACCOUNT, "privacy": "public", "audited": True},
            timeout=10,
        ).json()
        _add_account(settings, creator)

        print(f"reelflow demo: ingesting {clip} ({clip.stat().st_size} bytes)")
        print(f"  store:   {settings.resolved_store_url}")
        print(f"  catalog: {settings.resolved_database_url}")
        print(f"  TikTok:  sandbox at {sandbox.base_url}, account {DEMO_ACCOUNT!r}")
        summary = ingest_video(
            source=str(clip),
            account=DEMO_ACCOUNT,
            caption="reelflow demo #reelflow",
            privacy_level="PUBLIC_TO_EVERYONE",
            mode="direct",
        )
        stats = requests.get(f"{sandbox.base_url}/_sandbox/stats", timeout=10).json()
    print("\nsummary:")
    print(json.dumps(summary, indent=2, default=str))
    print("\nfiles:")
    for key in ("video_uri", "thumbnail_uri", "metadata_uri"):
        print(f"  {key:14} {summary[key]}")
    publish = summary.get("publish") or {}
    print(
        f"\nTikTok sandbox: publish {publish.get('publish_id')} is {publish.get('status')}"
        f" (post id {publish.get('post_id')}); the sandbox counted {stats.get('inits')} init(s),"
        f" {stats.get('posts')} post(s)."
    )
    print("run `make demo` again: the same content is found, nothing is uploaded or posted twice.")

    print(f"\ngateway: sending {clip.name} through `reelflow gateway` (tus 1.0) with tuspy")
    try:
        report = send_through_gateway(clip, settings)
    except DemoGatewayError as exc:
        print(f"gateway step failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("gateway step interrupted; the gateway was stopped", file=sys.stderr)
        return 130
    _print_gateway_report(report, summary.get("media_id"))
    return 0 if report.sha256 == report.file_sha256 else 1


def send_through_gateway(clip: Path, settings: Settings) -> GatewayReport:
    """Start a gateway, upload ``clip`` with tuspy, wait until its row is stored, stop it.

    The gateway is stopped (SIGTERM, SIGKILL after :data:`GATEWAY_STOP_GRACE_S`) however this
    ends, Ctrl-C included. Raises :class:`DemoGatewayError` when a bounded wait runs out or the
    upload ends other than stored.
    """
    try:
        from tusclient import client as tus_client  # a dev dependency: `make demo` installs it
    except ImportError as exc:
        raise DemoGatewayError("tuspy is not installed (pip install -e '.[dev]')") from exc

    env = _gateway_env(settings)
    log_path = settings.home / "demo-gateway.log"
    file_sha256 = _sha256_file(clip)
    size = clip.stat().st_size
    with _gateway(env, log_path) as (proc, base_url):
        token = _mint_token(env, DEMO_SUBJECT)
        uploader = tus_client.TusClient(
            f"{base_url}/uploads/", headers={"Authorization": f"Bearer {token}"}
        ).uploader(
            file_path=str(clip),
            chunk_size=TUS_CHUNK_BYTES,
            upload_checksum=True,  # each PATCH carries its SHA-1: the gateway checks it
            metadata={"filename": clip.name, "filetype": "video/mp4"},
        )
        patches = _upload(uploader, size, log_path)
        last_byte = time.monotonic()
        if not uploader.url:
            raise DemoGatewayError(f"the gateway created no upload; see {log_path}")
        upload_id = str(uploader.url).rstrip("/").rsplit("/", 1)[-1]
        row = _wait_stored(settings, upload_id, proc, log_path)
        stored_after = time.monotonic() - last_byte
    assert row.media_id is not None  # a stored row has one
    media = Catalog(make_engine(settings.resolved_database_url)).get_media(row.media_id)
    if media is None:
        raise DemoGatewayError(f"upload {upload_id} is stored but media {row.media_id} is not")
    return GatewayReport(
        upload_id=upload_id,
        size_bytes=size,
        patches=patches,
        media_id=media.media_id,
        sha256=media.sha256,
        file_sha256=file_sha256,
        last_byte_to_stored_s=stored_after,
        gateway_pid=proc.pid,
        log_path=log_path,
    )


def _upload(uploader: Any, size: int, log_path: Path) -> int:
    """Send the file in PATCHes of :data:`TUS_CHUNK_BYTES`; returns how many were sent.

    tuspy sets no timeouts, so the PATCHes run in a thread joined with a deadline: past it the
    caller stops the gateway, which closes the connection the thread is blocked on.
    """
    outcome: dict[str, Any] = {}

    def send() -> None:
        patches = 0
        try:
            while uploader.offset < size:
                before = uploader.offset
                uploader.upload_chunk()
                patches += 1
                if uploader.offset <= before:
                    raise DemoGatewayError(f"the gateway accepted no bytes at offset {before}")
            outcome["patches"] = patches
        except ReelflowError as exc:
            outcome["error"] = exc
        except Exception as exc:  # tuspy's TusCommunicationError, requests' errors
            error = DemoGatewayError(f"upload failed: {_reason(exc)}; see {log_path}")
            error.__cause__ = exc
            outcome["error"] = error

    sender = threading.Thread(target=send, name="demo-tus-upload", daemon=True)
    sender.start()
    sender.join(UPLOAD_TIMEOUT_S)
    if sender.is_alive():
        raise DemoGatewayError(f"the upload took over {UPLOAD_TIMEOUT_S:.0f} s; see {log_path}")
    if "error" in outcome:
        raise outcome["error"]
    return int(outcome["patches"])


def _gateway_env(settings: Settings) -> dict[str, str]:
    """The gateway's environment: this one, on the embedded defaults, with a signing secret."""
    env = dict(os.environ)
    # Embedded: with no Prefect server the gateway runs each received upload's flow itself.
    env.pop("PREFECT_API_URL", None)
    env.pop("REELFLOW_TIKTOK_API_BASE", None)  # the demo's sandbox is gone by now
    env["REELFLOW_HOME"] = str(settings.home)
    if settings.gateway_secret is None:
        env["REELFLOW_GATEWAY_SECRET"] = secrets.token_urlsafe(SECRET_BYTES)
    return env


@contextlib.contextmanager
def _gateway(env: dict[str, str], log_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """A running ``reelflow gateway`` on a free loopback port; stopped on the way out."""
    port = _free_port()
    base_url = f"http://127.0.0.1:{port}"
    cmd = [_reelflow(), "gateway", "--host", "127.0.0.1", "--port", str(port)]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            cmd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own group: stopped whole, and Ctrl-C reaches us only
        )
    try:
        _wait_healthy(proc, base_url, log_path)
        print(f"  gateway: {base_url}/uploads/ (pid {proc.pid}, log {log_path})")
        yield proc, base_url
    finally:
        _stop(proc)


def _wait_healthy(proc: subprocess.Popen[bytes], base_url: str, log_path: Path) -> None:
    deadline = time.monotonic() + GATEWAY_STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise DemoGatewayError(f"the gateway exited {proc.returncode}; see {log_path}")
        with contextlib.suppress(requests.RequestException):
            if requests.get(f"{base_url}/healthz", timeout=2).status_code == 200:
                return
        time.sleep(POLL_INTERVAL_S)
    raise DemoGatewayError(
        f"the gateway was not healthy after {GATEWAY_STARTUP_TIMEOUT_S:.0f} s; see {log_path}"
    )


def _mint_token(env: dict[str, str], subject: str) -> str:
    """A bearer token from ``reelflow gateway token`` (kept out of the output and the logs)."""
    try:
        done = subprocess.run(
            [_reelflow(), "gateway", "token", subject],
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=TOKEN_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired as exc:
        raise DemoGatewayError(
            f"`reelflow gateway token` took over {TOKEN_TIMEOUT_S:.0f} s"
        ) from exc
    lines = done.stdout.split()
    if done.returncode != 0 or len(lines) != 1:
        tail = done.stderr.strip().splitlines()[-1:] or ["no output"]
        raise DemoGatewayError(f"`reelflow gateway token` exited {done.returncode}: {tail[0]}")
    return lines[0]


def _wait_stored(
    settings: Settings, upload_id: str, proc: subprocess.Popen[bytes], log_path: Path
) -> uploads.GatewayUpload:
    """Poll the upload's row until the embedded hand-off stored it (bounded)."""
    engine = make_engine(settings.resolved_database_url)
    deadline = time.monotonic() + STORED_TIMEOUT_S
    state = "missing"
    while time.monotonic() < deadline:
        row = uploads.get(engine, upload_id)
        if row is not None:
            state = row.state
            if state == uploads.STORED:
                return row
            if state in _GIVEN_UP:
                raise DemoGatewayError(f"upload {upload_id} ended {state}: {row.error}")
        if proc.poll() is not None:
            raise DemoGatewayError(f"the gateway exited {proc.returncode}; see {log_path}")
        time.sleep(POLL_INTERVAL_S)
    raise DemoGatewayError(
        f"upload {upload_id} still {state} after {STORED_TIMEOUT_S:.0f} s; see {log_path}"
        f" and {settings.home}"
    )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the gateway's group, SIGKILL it after the grace period; reap the process."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=GATEWAY_STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=GATEWAY_STOP_GRACE_S)


def _print_gateway_report(report: GatewayReport, ingested_media_id: object) -> None:
    same = " (the one ingested above: stored once)" if report.media_id == ingested_media_id else ""
    match = (
        "matches the file's"
        if report.sha256 == report.file_sha256
        else f"DIFFERS from the file's {report.file_sha256}"
    )
    print(f"  upload:  {report.upload_id}, {report.size_bytes} bytes in {report.patches} PATCHes")
    print(f"  stored:  media {report.media_id}{same}")
    print(f"  sha256:  {report.sha256} {match}")
    print(f"  last byte to stored: {report.last_byte_to_stored_s:.1f} s; gateway stopped")


def _reason(exc: Exception) -> str:
    """One line for a failed tus request: the status and the gateway's own reason, if any."""
    status = getattr(exc, "status_code", None)
    body = getattr(exc, "response_content", None)
    reason = body.decode(errors="replace") if isinstance(body, bytes) else str(body or exc)
    line = (reason.strip().splitlines() or [type(exc).__name__])[0][:200]
    return f"HTTP {status}: {line}" if status else line


def _reelflow() -> str:
    """The ``reelflow`` script next to this interpreter (the venv's)."""
    return str(Path(sys.executable).with_name("reelflow"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _sha256_file(path: Path) -> str:
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _add_account(settings: Settings, creator: dict[str, object]) -> None:
    save_account(
        make_engine(settings.resolved_database_url),
        secret_box(settings),
        DEMO_ACCOUNT,
        access_token=str(creator["access_token"]),
        refresh_token=str(creator["refresh_token"]),
        expires_in=int(str(creator["expires_in"])),
        refresh_expires_in=int(str(creator["refresh_expires_in"])),
        open_id=str(creator["open_id"]),
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
