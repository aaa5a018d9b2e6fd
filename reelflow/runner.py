"""The warm runner: a fork server with prefect and reelflow imported, one per environment.

``reelflow`` (reelflow/launch.py) hands it argv, cwd, the environment and its fds 0/1/2; the
runner forks, and the child runs the typer app as the CLI process would have, on the caller's
own terminal or pipes. What the fork saves is the import (~2 s) and, on the embedded default
(no ``PREFECT_API_URL``), the Prefect API server the CLI would start per call (~10 s): the
runner starts one on 127.0.0.1 and keeps it while it lives.

What it must not do: hold anything a fork cannot copy. Before each fork there is one thread and
no engine, client or event loop (the preload is imports only), so each child starts as clean as
a fresh CLI. A child lives exactly as long as its caller: when the caller's end of the socket
closes (the CLI was killed), the child SIGKILLs its own process group at once, which is what
every kill test of the CLI relies on. The runner stops itself when idle, on SIGTERM, or on
``reelflow runner stop``, and takes its API server with it.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import importlib
import importlib.util
import io
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from reelflow import launch
from reelflow import runner_rules as rules

IDLE_S = 600.0  # REELFLOW_RUNNER_IDLE_S: no request and no live child for this long → stop
API_START_S = 120.0  # the API's migrations on a fresh SQLite file, on two shared cores
API_STOP_GRACE_S = 5.0  # SIGTERM, then SIGKILL (what Prefect's own ephemeral server allows)
CHILD_STOP_GRACE_S = 10.0  # runs still going when the runner is told to stop
TICK_S = 0.2  # reaping, idle and stop checks between requests
BACKLOG = 64
# Modules a command imports lazily (reelflow.cli keeps them out of `--help`); imported here,
# before any fork, so no child pays for them.
PRELOAD = (
    "reelflow.cli",
    "flows.ingest",
    "flows.publish",
    "flows.media_admin",
    "storage.catalog",
    "storage.publishing",
    "storage.schedule",
    "storage.accounts",
    "storage.crypto",
    "storage.clock",
    "tasks.status_poll",
)


def idle_seconds(environ: dict[str, str]) -> float:
    try:
        return max(0.0, float(environ.get("REELFLOW_RUNNER_IDLE_S", IDLE_S)))
    except ValueError:
        return IDLE_S


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:  # pragma: no cover - runs in the forked server before exec
    # Linux: if the runner is SIGKILLed, its API server gets SIGTERM instead of living on.
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:  # noqa: S310 (loopback)
            return bool(resp.status == 200)
    except OSError:
        return False


def spawn_api(log_path: Path) -> tuple[subprocess.Popen[bytes], str]:
    """One Prefect API on a free 127.0.0.1 port, the way Prefect's own ephemeral mode starts it
    (uvicorn on ``create_app``, no UI, no services; the same database as the CLI used), but kept
    for the runner's life. Not waited for: the runner imports prefect while it boots."""
    spec = importlib.util.find_spec("prefect")  # located, not imported: settings come later
    assert spec is not None and spec.origin is not None
    app_dir = str(Path(spec.origin).parent.parent)
    env = os.environ | {
        "PREFECT_UI_ENABLED": "0",
        "PREFECT__SERVER_EPHEMERAL": "1",
        "PREFECT__SERVER_FINAL": "1",
    }
    port = _free_port()
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "uvicorn", "--app-dir", app_dir, "--factory"),
                "prefect.server.api.server:create_app",
                *("--host", "127.0.0.1", "--port", str(port)),
                *("--log-level", "error", "--lifespan", "on"),
            ],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,  # noqa: PLW1509 (single-threaded here)
        )
    return proc, f"http://127.0.0.1:{port}/api"


def wait_api(proc: subprocess.Popen[bytes], url: str, log_path: Path) -> None:
    """Bounded wait on /api/health. A port taken between our probe and uvicorn's bind (exit 3)
    is not retried on another: prefect, imported by now, has this URL (the caller then runs
    the command in its own process, and the next call starts a new runner)."""
    deadline = time.monotonic() + API_START_S
    while time.monotonic() < deadline:
        code = proc.poll()
        if code is not None:
            raise RuntimeError(f"Prefect API exited with {code}; see {log_path}")
        if _healthy(url):
            return
        time.sleep(0.1)
    raise RuntimeError(f"Prefect API not healthy in {API_START_S:.0f} s")


def stop_api(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=API_STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=API_STOP_GRACE_S)


def _stop_stale_api(state_path: Path) -> None:
    """A runner SIGKILLed before Linux's parent-death signal existed for its server (or on a
    platform without it) leaves the server running: stop it if it is still a uvicorn."""
    try:
        pid = int(json.loads(state_path.read_text())["api_pid"])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError, KeyError, TypeError):
        return
    if b"uvicorn" in cmdline and b"prefect.server" in cmdline:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGTERM)


@dataclass
class Runner:
    sock_path: Path
    api_url: str | None
    api: subprocess.Popen[bytes] | None
    idle_s: float
    lock_fd: int
    listener: socket.socket | None = None
    children: dict[int, socket.socket] = field(default_factory=dict)
    last_activity: float = field(default_factory=time.monotonic)
    stopping: bool = False

    def status(self) -> dict[str, Any]:
        idle_in = None
        if not self.children:
            idle_in = round(max(0.0, self.idle_s - (time.monotonic() - self.last_activity)), 1)
        return {
            "pid": os.getpid(),
            "socket": str(self.sock_path),
            "api_url": self.api_url,
            "api_pid": self.api.pid if self.api else None,
            "children": sorted(self.children),
            "idle_in_s": idle_in,
        }


def _reap(runner: Runner) -> None:
    """Collect every ended child (no zombies) and tell its caller how it ended."""
    for pid in list(runner.children):
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            done, status = pid, 0
        if done == 0:
            continue
        conn = runner.children.pop(pid)
        runner.last_activity = time.monotonic()
        if os.WIFSIGNALED(status):
            message = {"signal": os.WTERMSIG(status)}
        else:
            message = {"exit": os.waitstatus_to_exitcode(status)}
        with contextlib.suppress(OSError):
            rules.send_message(conn, message)
        conn.close()


def _serve_child(
    runner: Runner, conn: socket.socket, request: dict[str, Any], fds: list[int]
) -> int:
    """In the forked child: become the caller's CLI process, run the command, return its code."""
    if runner.listener is not None:
        runner.listener.close()
    for other in runner.children.values():
        other.close()
    os.close(runner.lock_fd)  # a lock held by a child would outlive a killed runner
    os.setpgid(0, 0)  # our own group: a caller's death kills the run's ffmpeg children too
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD):
        signal.signal(signum, signal.SIG_DFL)
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        if fd > 2:
            os.close(fd)
    # The same stream objects (Prefect's log handlers hold them), on the caller's fds now.
    for stream, tty in ((sys.stdout, os.isatty(1)), (sys.stderr, True)):
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(line_buffering=tty)
    os.chdir(request["cwd"])
    env = request["env"]
    for name in [n for n in os.environ if not rules.is_key_var(n) and n not in env]:
        del os.environ[name]
    os.environ.update({k: v for k, v in env.items() if not rules.is_key_var(k)})
    argv = [str(a) for a in request["argv"]]
    sys.argv = ["reelflow", *argv]
    runner_pid = os.getppid()
    rules.send_message(conn, {"pid": os.getpid()})

    def watch() -> None:
        # Nothing more comes from the caller: EOF means it is gone, and so must the run be.
        with contextlib.suppress(OSError):
            while conn.recv(1):
                pass
        os.killpg(0, signal.SIGKILL)

    threading.Thread(target=watch, name="reelflow-runner-caller", daemon=True).start()

    code = 1
    try:
        code = launch.run_in_process(argv)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        if os.getppid() != runner_pid:
            # The runner is gone and cannot report our end: say it ourselves.
            with contextlib.suppress(OSError):
                rules.send_message(conn, {"exit": code})
    return code


def _exit_child(code: int) -> NoReturn:
    """End a child as the interpreter's own exit would, minus the module teardown.

    What a run needs at exit happens here in the interpreter's order: threading's exit hooks
    (Prefect's log and event workers drain to the API there) and the join of non-daemon
    threads, then the atexit functions, then the flush of stdout/stderr. What is skipped is the
    teardown of the ~3000 modules the runner preloaded: measured at ~2.4 s of a warm
    ``reelflow status`` (0.2 s of work) on the shared two cores, and nothing a caller can see.
    """
    try:
        threading._shutdown()  # type: ignore[attr-defined]  # what Py_FinalizeEx calls first
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code)


def _handle(runner: Runner, accepted: socket.socket) -> int | None:
    """One request; returns a code only in a forked child (which must then exit with it)."""
    fds: list[int] = []
    conn = accepted
    to_close: socket.socket | None = accepted
    try:
        conn.settimeout(rules.REQUEST_TIMEOUT_S)
        if rules.peer_uid(conn) != os.getuid():
            return None
        first, fds, _flags, _addr = socket.recv_fds(conn, 65536, 3)
        request = rules.LineReader(conn, first).next()
        if request is None:
            return None
        op = request.get("op")
        runner.last_activity = time.monotonic()
        if op == "status":
            rules.send_message(conn, runner.status())
        elif op == "stop":
            rules.send_message(conn, {"stopping": os.getpid()})
            runner.stopping = True
        elif op == "run" and len(fds) == 3:
            if threading.active_count() != 1:
                # A thread would not survive the fork (and its locks might be held): decline,
                # and the caller runs the command in its own process.
                rules.send_message(conn, {"error": "runner has threads"})
                return None
            conn.settimeout(None)
            pid = os.fork()
            if pid == 0:
                # Ours now, and kept until the interpreter's exit (atexit drains still run).
                child_fds, fds, to_close = fds, [], None
                return _serve_child(runner, conn, request, child_fds)
            runner.children[pid] = conn  # kept for the exit report
            to_close = None
        else:
            rules.send_message(conn, {"error": f"bad request {op!r}"})
    except (OSError, ValueError):
        pass
    finally:
        if to_close is not None:
            to_close.close()
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)
    return None


def _stop_children(runner: Runner) -> None:
    for pid in list(runner.children):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + CHILD_STOP_GRACE_S
    while runner.children and time.monotonic() < deadline:
        _reap(runner)
        time.sleep(0.05)
    for pid in list(runner.children):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
    while runner.children and time.monotonic() < deadline + CHILD_STOP_GRACE_S:
        _reap(runner)
        time.sleep(0.05)


def serve(runner: Runner) -> int | None:
    """The accept loop (single-threaded). Returns None when the runner stops, or a forked
    child's exit code (in that child)."""
    assert runner.listener is not None
    with selectors.DefaultSelector() as sel:
        sel.register(runner.listener, selectors.EVENT_READ)
        while not runner.stopping:
            for _key, _ in sel.select(TICK_S):
                try:
                    conn, _addr = runner.listener.accept()
                except OSError:
                    continue
                code = _handle(runner, conn)
                if code is not None:
                    sel.close()
                    return code
            _reap(runner)
            if runner.api is not None and runner.api.poll() is not None:
                runner.stopping = True  # the next call starts a runner with a working API
            idle = time.monotonic() - runner.last_activity
            if not runner.children and idle >= runner.idle_s:
                runner.stopping = True
    return None


def main() -> int:
    environ = dict(os.environ)
    sock_path = rules.socket_path(environ, sys.prefix)
    if not rules.secure_dir(sock_path.parent):
        return 1
    base = sock_path.with_suffix("")
    lock_fd = os.open(rules.lock_path(sock_path), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return 0  # another runner for this environment is up (or starting): the caller waits
    log_path = Path(f"{base}.log")
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    state_path = Path(f"{base}.json")
    _stop_stale_api(state_path)

    def on_term(_signum: int, _frame: object) -> None:
        raise SystemExit(0)  # unwinds to the clean stop below, from wherever the loop was

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)
    for name, value in rules.CLI_DEFAULTS.items():  # as reelflow.cli would, for the API too
        os.environ.setdefault(name, value)
    api: subprocess.Popen[bytes] | None = None
    runner: Runner | None = None
    runner_pid = os.getpid()
    try:
        api_url = environ.get("PREFECT_API_URL") or rules.configured_api_url(environ, Path.cwd())
        if api_url is None:
            api, api_url = spawn_api(log_path)
            os.environ["PREFECT_API_URL"] = api_url  # before prefect is imported: read at import
        for name in PRELOAD:
            importlib.import_module(name)
        if api is not None:
            wait_api(api, api_url, log_path)
        if threading.active_count() != 1:
            print(f"runner: the preload left threads: {threading.enumerate()}", flush=True)
            return 1
        runner = Runner(sock_path, api_url, api, idle_seconds(environ), lock_fd)
        with contextlib.suppress(FileNotFoundError):
            sock_path.unlink()  # a dead runner's socket (we hold the lock: none is alive)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(os.fspath(sock_path))
        os.chmod(sock_path, 0o600)
        listener.listen(BACKLOG)
        runner.listener = listener
        state_path.write_text(json.dumps(runner.status()))
        os.chmod(state_path, 0o600)
        code = serve(runner)
        if code is not None:
            _exit_child(code)  # a forked child: never returns
    except SystemExit:
        if os.getpid() != runner_pid:
            raise
    finally:
        if os.getpid() == runner_pid:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            if runner is not None:
                if runner.listener is not None:
                    runner.listener.close()
                with contextlib.suppress(FileNotFoundError):
                    sock_path.unlink()
                _stop_children(runner)
            stop_api(api)
            with contextlib.suppress(FileNotFoundError):
                state_path.unlink()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
