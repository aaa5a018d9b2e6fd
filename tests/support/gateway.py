"""Real ``reelflow gateway`` processes for the tests: start, wait until healthy, kill, stop.

Owns: the environment a gateway process runs in (REELFLOW_HOME, store and catalog URLs, the S3
endpoint, the signing secret; nothing inherited from the test process's own REELFLOW_* or
PREFECT_API_URL), starting ``reelflow gateway --host 127.0.0.1 --port N`` in its own process
group, waiting (bounded) for ``GET /healthz``, minting bearer tokens with
``reelflow gateway token``, and ending the process: SIGKILL (a crash) or SIGTERM (a shutdown),
both bounded, the whole group either way. Several processes built from one
:class:`GatewaySetup` share the store and the catalog, as scale-out instances do.

The gateway is a black box here: only the CLI contract of issue 10 and HTTP are used.

Must not: know the gateway's internals (tables, modules) or assert anything; tests do that.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.support.prefect_server import BIN, REPO, free_port, stop_group

STARTUP_TIMEOUT_S = 90.0  # the CLI imports Prefect and opens the catalog: ~3-8 s on 2 cores
STOP_GRACE_S = 10.0  # SIGTERM → uvicorn drains in-flight requests; past this the group is killed
TOKEN_TIMEOUT_S = 60.0
HEALTH_REQUEST_TIMEOUT_S = 2.0
LOG_TAIL_CHARS = 4000
# Variables of the test process a gateway must not inherit: each setup says what it wants.
_SCRUBBED_PREFIXES = ("REELFLOW_",)
_SCRUBBED = frozenset({"PREFECT_API_URL", "PREFECT_HOME"})


@dataclass
class GatewaySetup:
    """What every gateway process of one test shares: home, store, catalog, secret."""

    home: Path
    store_url: str | None = None  # None: the local store under home
    database_url: str | None = None  # None: the SQLite catalog under home
    s3_endpoint_url: str | None = None
    secret: str = field(default_factory=lambda: secrets.token_urlsafe(48))  # ≥ 32 bytes
    extra_env: dict[str, str] = field(default_factory=dict)

    def env(self, **extra: str) -> dict[str, str]:
        """The environment of a gateway (or ``reelflow gateway token``) process."""
        base = {
            k: v
            for k, v in os.environ.items()
            if k not in _SCRUBBED and not k.startswith(_SCRUBBED_PREFIXES)
        }
        env = base | {
            "REELFLOW_HOME": str(self.home),
            "REELFLOW_GATEWAY_SECRET": self.secret,
            # No Prefect server: the embedded default, where the gateway runs the flow itself.
            "PREFECT_HOME": str(self.home / "prefect"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "AWS_ACCESS_KEY_ID": os.environ.get("AWS_ACCESS_KEY_ID", "testing"),
            "AWS_SECRET_ACCESS_KEY": os.environ.get("AWS_SECRET_ACCESS_KEY", "testing"),
            "AWS_DEFAULT_REGION": os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
        }
        if self.store_url:
            env["REELFLOW_STORE_URL"] = self.store_url
        if self.database_url:
            env["REELFLOW_DATABASE_URL"] = self.database_url
        if self.s3_endpoint_url:
            env["REELFLOW_S3_ENDPOINT_URL"] = self.s3_endpoint_url
        return env | self.extra_env | extra

    def settings(self) -> Any:
        """The same configuration as reelflow ``Settings``, for a test reading store/catalog."""
        from reelflow.settings import Settings

        return Settings(
            home=self.home,
            store_url=self.store_url,
            database_url=self.database_url,
            s3_endpoint_url=self.s3_endpoint_url,
        )

    def token(
        self,
        subject: str,
        *,
        accounts: tuple[str, ...] = (),
        ttl_s: int | None = None,
        max_size: int | None = None,
    ) -> str:
        """A bearer token for ``subject``, printed by ``reelflow gateway token`` (bounded)."""
        cmd = [str(BIN / "reelflow"), "gateway", "token", subject]
        for account in accounts:
            cmd += ["--account", account]
        if ttl_s is not None:
            cmd += ["--ttl", str(ttl_s)]
        if max_size is not None:
            cmd += ["--max-size", str(max_size)]
        try:
            done = subprocess.run(
                cmd,
                env=self.env(),
                cwd=REPO,
                capture_output=True,
                text=True,
                timeout=TOKEN_TIMEOUT_S,
            )
        except subprocess.TimeoutExpired as exc:
            raise AssertionError(f"`reelflow gateway token` took over {TOKEN_TIMEOUT_S}s") from exc
        if done.returncode != 0:
            raise AssertionError(
                f"`reelflow gateway token` exited {done.returncode}: {done.stderr[-2000:]}"
            )
        lines = [line for line in done.stdout.splitlines() if line.strip()]
        if len(lines) != 1:
            raise AssertionError(f"`reelflow gateway token` printed {len(lines)} lines, not 1")
        return lines[0].strip()

    def end_runs(self, grace_s: float = STOP_GRACE_S) -> list[int]:
        """End the pipeline runs this setup's gateways started and left behind.

        A gateway starts each run in a session of its own, so that it outlives a gateway crash;
        a test must not leave them running. They are found by this setup's REELFLOW_HOME in
        their environment (only processes of ours can be read), sent SIGTERM, then SIGKILL
        after ``grace_s``. Returns their pids.
        """
        import psutil

        home = str(self.home)
        mine = []
        for proc in psutil.process_iter(["pid"]):
            if proc.pid == os.getpid():
                continue
            try:
                if proc.environ().get("REELFLOW_HOME") == home:
                    mine.append(proc)
            except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
                continue
        for proc in mine:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.terminate()
        _, alive = psutil.wait_procs(mine, timeout=grace_s)
        for proc in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        psutil.wait_procs(alive, timeout=grace_s)
        return [proc.pid for proc in mine]

    def process(self, name: str = "gw", **extra_env: str) -> GatewayProcess:
        """A gateway process of this setup (not started); logs go to ``home/<name>.log``."""
        return GatewayProcess(self, name=name, extra_env=extra_env)

    @contextlib.contextmanager
    def running(self, name: str = "gw") -> Iterator[GatewayProcess]:
        """One started gateway, stopped afterwards with every pipeline run it started."""
        gw = self.process(name)
        try:
            yield gw.start()
        finally:
            gw.stop()
            self.end_runs()


class GatewayProcess:
    """``with setup.process("a") as gw: gw.uploads_url ... gw.kill()``."""

    def __init__(self, setup: GatewaySetup, *, name: str, extra_env: dict[str, str]) -> None:
        self.setup = setup
        self.name = name
        self.extra_env = extra_env
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.uploads_url = f"{self.base_url}/uploads/"
        self.log_path = setup.home / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-LOG_TAIL_CHARS:]
        except FileNotFoundError:
            return ""

    def start(self, timeout_s: float = STARTUP_TIMEOUT_S) -> GatewayProcess:
        self.setup.home.mkdir(parents=True, exist_ok=True)
        cmd = [str(BIN / "reelflow"), "gateway", "--host", "127.0.0.1", "--port", str(self.port)]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                cmd,
                env=self.setup.env(**self.extra_env),
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                code = self.proc.returncode
                self.proc = None
                raise AssertionError(f"gateway {self.name} exited {code}:\n{self.log_tail()}")
            try:
                reply = httpx.get(f"{self.base_url}/healthz", timeout=HEALTH_REQUEST_TIMEOUT_S)
                if reply.status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(
                    f"gateway {self.name} not healthy after {timeout_s:.0f}s:\n{self.log_tail()}"
                )
            time.sleep(0.2)

    def kill(self) -> None:
        """SIGKILL the whole group at once: a crash, with no chance to flush or release."""
        if self.proc is not None:
            stop_group(self.proc, signal.SIGKILL, 0)
            self.proc = None

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """SIGTERM (a clean shutdown), then SIGKILL the group after ``grace_s``."""
        if self.proc is not None:
            stop_group(self.proc, signal.SIGTERM, grace_s)
            self.proc = None

    def __enter__(self) -> GatewayProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def auth(token: str) -> dict[str, str]:
    """The headers of an authenticated tus request."""
    return {"Authorization": f"Bearer {token}", "Tus-Resumable": "1.0.0"}
