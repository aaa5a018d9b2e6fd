"""The runner's rules and wire, shared by the launcher, the runner and ``reelflow runner``.

Which commands go to a runner, which environment keys one, where its socket lives and who may
use it, and the newline-delimited JSON both ends speak. Standard library only, and nothing
from the CLI: the launcher imports this before deciding whether to load the CLI at all.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import stat
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
MAX_MESSAGE_BYTES = 4 * 1024 * 1024  # a request is argv + cwd + the environment
REQUEST_TIMEOUT_S = (
    5.0  # the runner's accept loop is single-threaded: a silent peer must not hold it
)
STOP_WAIT_S = 40.0  # `reelflow runner stop`: its children's grace twice, its API's twice
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


def lock_path(sock_path: Path) -> Path:
    return sock_path.with_suffix(".lock")


def lock_free(sock_path: Path) -> bool:
    """Whether no runner holds this socket's lock (none is starting, serving or stopping)."""
    import fcntl

    fd = os.open(lock_path(sock_path), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)  # releases it, if we got it
    return True


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


def send_message(sock: socket.socket, message: Mapping[str, object]) -> None:
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
