"""A real `prefect server start` for end-to-end tests (not the test harness).

Runs the server in its own process group with its own PREFECT_HOME, on 127.0.0.1 and a free
port, on SQLite or on a PostgreSQL database created for it. Background services (triggers,
scheduler) run as they do in production. ``env()`` gives the variables a client process needs.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from tests.support.waiting import wait_for

PG_ADMIN_URL = os.environ.get(
    "REELFLOW_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent  # this venv's console scripts: prefect, reelflow
STARTUP_TIMEOUT_S = 180
# A healthy server, worker or runner exits in about a second after its signal (measured 0.5-3 s
# on 2 cores); past these the group is killed, so a shutdown that hangs costs seconds, not 20-30.
SERVER_STOP_GRACE_S = 10.0
PROCESS_STOP_GRACE_S = 5.0


API_ATTEMPTS = 6  # 503 retries, ~8 s in all


def prefect_api(method: str, url: str, **kwargs: Any) -> httpx.Response:
    """One Prefect API call. A busy SQLite-backed server answers 503 ("database is locked");
    Prefect's own client retries those with backoff, and so does this."""
    for attempt in range(API_ATTEMPTS):
        try:
            reply = httpx.request(method, url, timeout=10, **kwargs)
        except httpx.TransportError:
            if attempt == API_ATTEMPTS - 1:
                raise
        else:
            if reply.status_code not in (502, 503) or attempt == API_ATTEMPTS - 1:
                return reply
        time.sleep(0.25 * 2**attempt)
    raise AssertionError("unreachable")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def create_pg_database(prefix: str = "prefect_e2e") -> tuple[str, str]:
    """A fresh database with pg_trgm (Prefect's server needs it); returns (name, asyncpg URL)."""
    import psycopg

    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    with psycopg.connect(PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}", autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    return name, f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"


def drop_pg_database(name: str) -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class PrefectServer:
    """``with PrefectServer(postgres=True) as server: server.api_url, server.env()``."""

    def __init__(
        self,
        *,
        postgres: bool = False,
        log_dir: Path | None = None,
        server_env: dict[str, str] | None = None,
    ) -> None:
        self.postgres = postgres
        self.extra_server_env = server_env or {}
        self.port = free_port()
        self.home = Path(tempfile.mkdtemp(prefix="reelflow-prefect-server-"))
        self.log_path = (log_dir or self.home) / "server.log"
        self.api_url = f"http://127.0.0.1:{self.port}/api"
        self.ui_url = f"http://127.0.0.1:{self.port}"
        self._db_name: str | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    def env(self, **extra: str) -> dict[str, str]:
        """Environment for a client process (CLI, worker, `reelflow serve`) of this server."""
        return (
            os.environ
            | {
                "PREFECT_API_URL": self.api_url,
                "PREFECT_HOME": str(self.home / "client"),
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            }
            | extra
        )

    def start(self) -> PrefectServer:
        server_env = os.environ | {
            "PREFECT_HOME": str(self.home),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_UI_ENABLED": "true",
            # Without it the UI calls 127.0.0.1:4200 and shows "Can't connect to Server API".
            "PREFECT_UI_API_URL": self.api_url,
        }
        server_env.pop("PREFECT_API_URL", None)
        server_env |= self.extra_server_env
        if self.postgres:
            self._db_name, url = create_pg_database()
            server_env["PREFECT_API_DATABASE_CONNECTION_URL"] = url
        log = self.log_path.open("wb")
        prefect = str(BIN / "prefect")
        self._proc = subprocess.Popen(
            [prefect, "server", "start", "--host", "127.0.0.1", "--port", str(self.port)],
            env=server_env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"prefect server exited: {self.log_path.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.api_url}/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"prefect server did not start in {STARTUP_TIMEOUT_S}s")

    def stop(self) -> None:
        if self._proc is not None:
            stop_group(self._proc, signal.SIGTERM, SERVER_STOP_GRACE_S)
            self._proc = None
        if self._db_name:
            drop_pg_database(self._db_name)
            self._db_name = None
        if self.log_path.parent != self.home:
            shutil.rmtree(self.home, ignore_errors=True)

    def __enter__(self) -> PrefectServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def start_process(
    cmd: list[str], env: dict[str, str], log_path: Path, cwd: Path
) -> subprocess.Popen[bytes]:
    """A long-running helper process (worker, `reelflow serve`, bridge) in its own group."""
    log = log_path.open("wb")
    return subprocess.Popen(
        cmd, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )


# Printed by prefect's serve() once every deployment (and its triggers) is registered, right
# before the runner starts polling.
SERVING_BANNER = "Your deployments are being served"


def wait_until_served(proc: subprocess.Popen[bytes], log_path: Path, timeout_s: float) -> None:
    """Wait for ``reelflow serve`` (``proc``, logging to ``log_path``) to have registered its
    deployments. On a shared server a deployment of the same name may exist already, left by an
    earlier serve process: finding it over the API says nothing about this one."""

    def served() -> bool:
        assert proc.poll() is None, log_path.read_text(errors="replace")[-4000:]
        return SERVING_BANNER in log_path.read_text(errors="replace")

    wait_for(served, "reelflow serve to register its deployments", timeout_s)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):  # the whole group is gone already
        os.killpg(pgid, sig)


def stop_group(proc: subprocess.Popen[bytes], sig: signal.Signals, grace_s: float) -> None:
    """Send ``sig`` to ``proc``'s process group; SIGKILL the group after ``grace_s``.

    The group is killed even when its leader exits in time: a child it left behind (a flow run's
    process, a uvicorn worker) must not outlive the test.
    """
    if proc.poll() is None:
        _signal_group(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace_s)
    _signal_group(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def stop_process(proc: subprocess.Popen[bytes], grace_s: float = PROCESS_STOP_GRACE_S) -> None:
    """Stop a helper process from ``start_process`` and its group; workers and runners shut
    down on SIGINT (a runner pauses its deployments), and are killed if that takes too long."""
    stop_group(proc, signal.SIGINT, grace_s)
