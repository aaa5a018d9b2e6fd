"""The ``reelflow`` console script: hand a command to the warm runner, or run it here.

Importing prefect and reelflow costs ~2 s and the embedded default starts a Prefect API server
per call (~10 s); a run itself is often well under a second. The runner (reelflow/runner.py)
keeps both warm and forks a child per command, so this front must stay cheap: it imports the
standard library only (``python -X importtime -c "import reelflow.launch"``), and everything
that is not a runner command, or any trouble reaching the runner, falls back to importing
``reelflow.cli`` and running it in this process exactly as before.

The rules it follows (which commands, which runner, which socket) are in runner_rules.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence

from reelflow.runner_rules import (
    LineReader,
    connect,
    lock_free,
    runner_command,
    secure_dir,
    socket_path,
    wanted,
)

START_WAIT_S = 90.0  # a cold start imports prefect and starts its API on two busy cores
CONNECT_POLL_S = 0.05


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
    wait, if it failed to start, or if its directory is not ours alone."""
    path = socket_path(environ, sys.prefix)
    if not secure_dir(path.parent):
        return None
    try:
        wait_s = float(environ.get("REELFLOW_RUNNER_START_S", START_WAIT_S))
    except ValueError:
        wait_s = START_WAIT_S
    deadline = time.monotonic() + wait_s
    proc: subprocess.Popen[bytes] | None = None
    while True:
        sock = connect(path)
        if sock is not None:
            return sock
        if proc is not None and proc.poll() not in (None, 0):
            return None  # it could not start (its log says why): run in process
        # Exit 0 is a runner that found the lock held; while it is held, another runner is
        # starting (wait for its socket) or stopping (start ours once it has let go).
        if (proc is None or proc.poll() == 0) and lock_free(path):
            proc = spawn_runner(environ)
        if time.monotonic() >= deadline:
            return None
        time.sleep(CONNECT_POLL_S)


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
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)

    for forwarded in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(forwarded, forward)
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
