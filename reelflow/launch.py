"""The ``reelflow`` console script: hand a command to the warm runner, or run it here.

Importing prefect and reelflow costs ~2 s and the embedded default starts a Prefect API server
per call (~10 s); a run itself is often well under a second. The runner (reelflow/runner.py)
keeps both warm and forks a child per command, so this front must stay cheap: it imports the
standard library only (``python -X importtime -c "import reelflow.launch"``), and everything
that is not a runner command, or any trouble reaching the runner, falls back to importing
``reelflow.cli`` and running it in this process exactly as before.

The pure rules (which commands go to the runner, which environment keys a runner, where its
socket lives) are here so the runner and the tests share one copy of them.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

# The commands a runner serves: short-lived ones that talk to Prefect, S3 or the catalog.
# `gateway` and `serve` are servers, `sample` and `s3-events` never need Prefect warm,
# `runner` manages the runner itself (it must work when the runner is wedged).
RUNNER_COMMANDS = frozenset({"ingest", "publish", "status", "media"})
# Variables that change what a run does in ways fixed at the runner's import time (Prefect
# reads its settings at import, reelflow's settings read REELFLOW_*, boto3 reads AWS_*).
KEY_PREFIXES = ("PREFECT_", "REELFLOW_", "AWS_")
KEY_NAMES = frozenset({"HOME", "PATH", "PYTHONPATH"})
# Per call, not per runner: the switch itself and how long the caller waits for a start.
NOT_KEY_NAMES = frozenset({"REELFLOW_RUNNER", "REELFLOW_RUNNER_START_S"})
START_WAIT_S = 90.0  # a cold start imports prefect and starts its API on two busy cores
CONNECT_POLL_S = 0.05
MAX_MESSAGE_BYTES = 4 * 1024 * 1024  # a request is argv + cwd + the environment
SOCKET_PATH_MAX = 107  # sun_path is 108 bytes with the NUL
# What reelflow.cli sets by default at its import: applied to the key too, so a process that
# has imported the CLI (`reelflow runner status`) finds the runner its caller would.
CLI_DEFAULTS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore",
}


def is_key_var(name: str) -> bool:
    """Whether ``name`` is part of the runner's key (fixed for the runner's lifetime)."""
    if name in NOT_KEY_NAMES:
        return False
    return name in KEY_NAMES or name.startswith(KEY_PREFIXES)


def prefect_home(environ: Mapping[str, str]) -> Path:
    home = environ.get("PREFECT_HOME") or os.path.join(environ.get("HOME", "~"), ".prefect")
    return Path(home).expanduser()


def settings_files(environ: Mapping[str, str], cwd: Path) -> list[Path]:
    """Files Prefect reads its settings from besides the environment (at import, so fixed
    for a runner): the profiles file, and ``prefect.toml``, ``.env``, ``pyproject.toml`` in
    the working directory."""
    profiles = environ.get("PREFECT_PROFILES_PATH") or str(prefect_home(environ) / "profiles.toml")
    return [Path(profiles).expanduser(), cwd / "prefect.toml", cwd / ".env", cwd / "pyproject.toml"]


def env_key(environ: Mapping[str, str], prefix: str, cwd: Path | None = None) -> str:
    """A hex digest of the variables that key a runner, the interpreter's prefix and the
    settings files Prefect would read from ``cwd`` (the current directory by default).

    Values (secrets among them) go into the hash only; nothing here writes them anywhere."""
    environ = {**CLI_DEFAULTS, **environ}
    h = hashlib.sha256()
    for name in sorted(n for n in environ if is_key_var(n)):
        for part in (name, environ[name]):
            h.update(part.encode("utf-8", "surrogateescape"))
            h.update(b"\0")
    h.update(b"prefix\0" + prefix.encode("utf-8", "surrogateescape"))
    for path in settings_files(environ, Path.cwd() if cwd is None else cwd):
        try:
            content = path.read_bytes()
        except OSError:
            content = b""
        h.update(hashlib.sha256(content).digest())
    return h.hexdigest()


def configured_api_url(environ: Mapping[str, str], cwd: Path) -> str | None:
    """PREFECT_API_URL from the active Prefect profile (the environment's own is read by the
    caller). A runner only starts a local API when neither gives one, as the CLI would."""
    import tomllib

    path = settings_files(environ, cwd)[0]
    try:
        profiles = tomllib.loads(path.read_text())
    except (OSError, ValueError):
        return None
    active = environ.get("PREFECT_PROFILE") or profiles.get("active") or "ephemeral"
    url = profiles.get("profiles", {}).get(active, {}).get("PREFECT_API_URL")
    return str(url) if url else None


def runner_command(argv: Sequence[str]) -> str | None:
    """The command a runner would serve for ``argv`` (the arguments after ``reelflow``), or None.

    Only a leading command word counts: a top-level option first (``--help``,
    ``--install-completion``) stays in process."""
    if not argv or argv[0] not in RUNNER_COMMANDS:
        return None
    return argv[0]


def wanted(environ: Mapping[str, str]) -> bool:
    """The runner is on unless ``REELFLOW_RUNNER=off`` (or the platform cannot fork, pass fds)."""
    if environ.get("REELFLOW_RUNNER", "").strip().lower() in {"off", "0", "false", "no"}:
        return False
    return (
        hasattr(os, "fork")
        and hasattr(socket, "AF_UNIX")
        and hasattr(socket, "send_fds")
        and hasattr(socket, "SO_PEERCRED")
    )


def socket_dir(environ: Mapping[str, str]) -> Path:
    runtime = environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return Path(runtime) / "reelflow"
    return Path(f"/tmp/reelflow-{os.getuid()}")


def socket_path(environ: Mapping[str, str], prefix: str) -> Path:
    return socket_dir(environ) / f"runner-{env_key(environ, prefix)[:16]}.sock"


def secure_dir(path: Path) -> bool:
    """Create ``path`` 0700, and say whether it is ours alone (owner us, no group/other bits)."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = os.lstat(path)
    except OSError:
        return False
    return (
        stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() and stat.S_IMODE(st.st_mode) == 0o700
    )


def peer_uid(sock: socket.socket) -> int:
    import struct

    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return int(struct.unpack("3i", creds)[1])


def send_message(sock: socket.socket, message: dict[str, object]) -> None:
    sock.sendall(json.dumps(message).encode() + b"\n")


class LineReader:
    """Newline-delimited JSON messages off a stream socket (bounded in size)."""

    def __init__(self, sock: socket.socket, first: bytes = b"") -> None:
        self.sock = sock
        self.buf = first

    def next(self) -> dict[str, object] | None:
        while b"\n" not in self.buf:
            if len(self.buf) > MAX_MESSAGE_BYTES:
                raise ValueError("message too long")
            chunk = self.sock.recv(65536)
            if not chunk:
                return None
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        message = json.loads(line)
        if not isinstance(message, dict):
            raise ValueError("message is not an object")
        return message


def connect(path: Path) -> socket.socket | None:
    """A connection to the runner at ``path`` if one listens there (and runs as us)."""
    if len(os.fsencode(path)) > SOCKET_PATH_MAX:
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(os.fspath(path))
        if peer_uid(sock) != os.getuid():
            raise PermissionError("runner socket is not ours")
    except OSError:
        sock.close()
        return None
    return sock


def spawn_runner(environ: Mapping[str, str]) -> subprocess.Popen[bytes]:
    """Start ``python -m reelflow.runner`` detached (own session, no std streams of ours: a
    caller capturing our output must not wait for the runner to exit)."""
    return subprocess.Popen(
        [sys.executable, "-m", "reelflow.runner"],
        env=dict(environ),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        close_fds=True,
    )


def reach_runner(environ: Mapping[str, str]) -> socket.socket | None:
    """Connect to this environment's runner, starting it when absent; None after the bounded
    wait (or if its directory is not ours alone)."""
    path = socket_path(environ, sys.prefix)
    if not secure_dir(path.parent):
        return None
    sock = connect(path)
    if sock is not None:
        return sock
    proc = spawn_runner(environ)
    try:
        wait_s = float(environ.get("REELFLOW_RUNNER_START_S", START_WAIT_S))
    except ValueError:
        wait_s = START_WAIT_S
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        sock = connect(path)
        if sock is not None:
            return sock
        # Exit 0 is a runner that found another one starting (the lock): keep waiting for it.
        if proc.poll() not in (None, 0):
            return None
        time.sleep(CONNECT_POLL_S)
    return None


def _std_fds() -> list[int]:
    """Our fds 0/1/2 (a closed one is sent as /dev/null, as a child would see it)."""
    fds = []
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
            fds.append(fd)
        except OSError:
            fds.append(os.open(os.devnull, os.O_RDWR))
    return fds


def run_remote(sock: socket.socket, argv: Sequence[str]) -> int | None:
    """Hand ``argv`` to the runner and wait for its child. None: the runner declined before a
    child started (run in process instead). Otherwise the child's exit code; a child killed by
    a signal kills us with the same signal, as if the run had been in this process."""
    request = {"op": "run", "argv": list(argv), "cwd": os.getcwd(), "env": dict(os.environ)}
    socket.send_fds(sock, [json.dumps(request).encode() + b"\n"], _std_fds())
    reader = LineReader(sock)
    first = reader.next()
    if first is None or "pid" not in first:
        return None
    pid = int(str(first["pid"]))

    def forward(signum: int, _frame: object) -> None:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, forward)
    while True:
        try:
            message = reader.next()
        except (OSError, ValueError):
            message = None  # the run started: never fall back to a second one in process
        if message is None:
            sys.stderr.write("error: runner_lost: the runner ended before the run did\n")
            return 1
        if "exit" in message:
            return int(str(message["exit"]))
        if "signal" in message:
            signum = int(str(message["signal"]))
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return 128 + signum


def run_in_process(argv: Sequence[str]) -> int:
    from reelflow.cli import app

    try:
        app(args=list(argv), prog_name="reelflow")
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        raise
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if runner_command(args) is not None and wanted(os.environ):
        why = "unreachable"
        try:
            sock = reach_runner(os.environ)
            if sock is not None:
                with sock:
                    code = run_remote(sock, args)
                if code is not None:
                    return code
                why = "declined"
        except (OSError, ValueError) as exc:
            why = type(exc).__name__
        if "--verbose" in args or "-v" in args:
            sys.stderr.write(f"reelflow: runner {why}; running in this process\n")
    return run_in_process(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
