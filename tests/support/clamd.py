"""A real ClamAV daemon for tests: Debian's ``clamd`` with a signature database written here.

The official signature downloads (freshclam) are not reachable, and the tests need a hit they
control anyway: the database holds one body signature (``.ndb``) matching :data:`MARKER`, which
clamd reports as :data:`SIGNATURE`. The daemon gets its own clamd.conf (a unix socket in a
private temporary directory plus TCP on a free 127.0.0.1 port, Foreground, no freshclam) with
the limits reelflow documents: StreamMaxLength 4096M (the 4 GiB source limit), AlertExceedsMax
so a scan cut short by a limit is never reported as clean.

Must not: use reelflow's clamd client (a broken client must not look like a broken daemon).
"""

from __future__ import annotations

import ctypes
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

# Bytes no real file carries by chance; the signature's name says where it comes from.
MARKER = b"REELFLOW-CLAMD-TEST-MARKER:6b1f0e52c9d84a7b"
SIGNATURE_NAME = "Reelflow.Test.Marker-1"
SIGNATURE = f"{SIGNATURE_NAME}.UNOFFICIAL"  # clamd's suffix for signatures not from ClamAV
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child before exec: a killed test session must not leave clamd running."""
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def clamd_binary() -> str | None:
    return shutil.which("clamd") or (
        "/usr/sbin/clamd" if Path("/usr/sbin/clamd").exists() else None
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _ping(path: str) -> bool:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(2.0)
            s.connect(path)
            s.sendall(b"zPING\x00")
            return s.recv(16).startswith(b"PONG")
    except OSError:
        return False


class ClamdDaemon:
    """``with ClamdDaemon() as d:`` starts clamd and waits for PONG; ``d.url`` / ``d.tcp_url``."""

    def __init__(self, *, stream_max_length: str = "4096M") -> None:
        self.stream_max_length = stream_max_length
        # Short on purpose: a unix socket path must fit in 108 bytes.
        self.dir = Path(tempfile.mkdtemp(prefix="rf-clamd-"))
        self.socket_path = self.dir / "clamd.sock"
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}"

    @property
    def tcp_url(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    def _write_config(self) -> Path:
        db = self.dir / "db"
        db.mkdir()
        # name:target type (0 = any file):offset (* = anywhere):hex body
        (db / "reelflow-test.ndb").write_text(f"{SIGNATURE_NAME}:0:*:{MARKER.hex()}\n")
        tmp = self.dir / "tmp"
        tmp.mkdir()
        conf = self.dir / "clamd.conf"
        conf.write_text(
            "\n".join(
                [
                    f"LocalSocket {self.socket_path}",
                    "LocalSocketMode 600",
                    "TCPAddr 127.0.0.1",
                    f"TCPSocket {self.port}",
                    f"DatabaseDirectory {db}",
                    f"TemporaryDirectory {tmp}",
                    f"LogFile {self.dir / 'clamd.log'}",
                    f"PidFile {self.dir / 'clamd.pid'}",
                    "Foreground yes",
                    "SelfCheck 0",
                    "MaxThreads 4",
                    f"StreamMaxLength {self.stream_max_length}",
                    "MaxFileSize 2047M",  # ClamAV scans at most 2 GiB - 3 bytes of one input
                    "MaxScanSize 4095M",
                    "AlertExceedsMax yes",
                    "",
                ]
            )
        )
        return conf

    def log_tail(self, lines: int = 30) -> str:
        log = self.dir / "clamd.log"
        return (
            "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.exists() else ""
        )

    def __enter__(self) -> ClamdDaemon:
        binary = clamd_binary()
        if binary is None:
            raise RuntimeError("clamd is not installed: run `make clamav` (Debian clamav-daemon)")
        conf = self._write_config()
        self.proc = subprocess.Popen(
            [binary, "--config-file", str(conf), "--foreground"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=self.dir,
            preexec_fn=_die_with_parent,
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _ping(str(self.socket_path)):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"clamd did not start:\n{self.log_tail()}")
            time.sleep(0.1)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=STOP_TIMEOUT_S)
        self.proc = None
        shutil.rmtree(self.dir, ignore_errors=True)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
