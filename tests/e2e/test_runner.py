"""The warm runner for real: forked children on the caller's fds, kills, idle stop, env keys.

Every test owns its runner (a private XDG_RUNTIME_DIR and REELFLOW_HOME) and talks to it only
through the ``reelflow`` launcher, as a user would; the S3 store is moto's server and Prefect a
real API (the session's, or the runner's own local one on the embedded default).
"""

from __future__ import annotations

import json
import math
import os
import pty
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reelflow.planning import MIB
from tests.support.waiting import wait_for

CHUNK = 5 * MIB
CONCURRENCY = 2
CALL_TIMEOUT_S = 300
PARTS_BEFORE_KILL = 3


def launcher(*args: str) -> list[str]:
    return [sys.executable, "-m", "reelflow.launch", *args]


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        launcher(*args), env=env, capture_output=True, text=True, timeout=CALL_TIMEOUT_S
    )


def runner_status(env: dict[str, str]) -> dict[str, Any] | None:
    done = run(env, "runner", "status", "--json")
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert (answer is None) == (done.returncode == 1), done
    return answer if isinstance(answer, dict) else None


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes (its parent reaps it on its next tick).
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] == "Z")


class Runners:
    """The environments a test's runners live in; every runner left is stopped at the end."""

    def __init__(self, base: dict[str, str]) -> None:
        self.base = base
        self.dirs: list[Path] = []

    def env(self, **extra: str) -> dict[str, str]:
        # Short: a unix socket path must fit in 108 bytes.
        run_dir = Path(tempfile.mkdtemp(prefix="rf-", dir="/tmp"))
        self.dirs.append(run_dir)
        return self.base | {"REELFLOW_RUNNER": "on", "XDG_RUNTIME_DIR": str(run_dir)} | extra

    def close(self) -> None:
        for d in self.dirs:
            for state in (d / "reelflow").glob("runner-*.json"):
                try:
                    info = json.loads(state.read_text())
                except (OSError, ValueError):
                    continue
                for pid in [info.get("pid"), info.get("api_pid")]:
                    if isinstance(pid, int) and alive(pid):
                        os.kill(pid, signal.SIGTERM)
                        try:
                            wait_for(lambda p=pid: not alive(p), "runner stopped", timeout_s=30)
                        except AssertionError:
                            os.kill(pid, signal.SIGKILL)
            shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def runners(s3_server: Any, bucket: str, tmp_path: Path) -> Iterator[Runners]:
    base = os.environ | {
        "REELFLOW_HOME": str(tmp_path / "home"),
        "REELFLOW_STORE_URL": f"s3://{bucket}/media",
        "REELFLOW_S3_ENDPOINT_URL": s3_server.endpoint_url,
    }
    base.pop("PREFECT_API_URL", None)
    r = Runners(base)
    try:
        yield r
    finally:
        r.close()


def summary_of(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def own_clip(clips: Any, tmp_path: Path, name: str, pad: int) -> Path:
    """A valid clip with content of its own (a trailing ``free`` box): nothing dedups it."""
    out = tmp_path / f"{name}.mp4"
    shutil.copyfile(clips.valid_vertical(), out)
    payload = pad.to_bytes(16, "big")
    with out.open("ab") as fh:
        fh.write((8 + len(payload)).to_bytes(4, "big") + b"free" + payload)
    return out


@pytest.mark.slow
def test_embedded_runner_serves_calls_from_one_process_and_stops_when_idle(
    runners: Runners, clips: Any, tmp_path: Path
) -> None:
    """No PREFECT_API_URL: one runner and its one local API serve both ingests (each right),
    and REELFLOW_RUNNER_IDLE_S later both are gone and the socket removed."""
    env = runners.env(PREFECT_HOME=str(tmp_path / "prefect"), REELFLOW_RUNNER_IDLE_S="6")
    first = summary_of(run(env, "ingest", str(own_clip(clips, tmp_path, "a", 1)), "--json"))
    before = runner_status(env)
    assert before is not None and before["api_url"].startswith("http://127.0.0.1:")
    second = summary_of(run(env, "ingest", str(own_clip(clips, tmp_path, "b", 2)), "--json"))
    after = runner_status(env)
    assert after is not None
    assert (after["pid"], after["api_pid"]) == (before["pid"], before["api_pid"])
    assert first["sha256"] != second["sha256"]
    listed = json.loads(run(env, "status", "--json").stdout)
    stored = {m["media_id"]: m["status"] for m in listed["media"]}
    assert stored == {first["media_id"]: "stored", second["media_id"]: "stored"}

    wait_for(lambda: not alive(after["pid"]), "the idle runner to stop", timeout_s=60)
    wait_for(lambda: not alive(after["api_pid"]), "its API server to stop", timeout_s=30)
    assert not Path(after["socket"]).exists()


def runner_children(env: dict[str, str]) -> tuple[int, list[int]]:
    """The runner's pid and its forked children, read from /proc (``reelflow runner status``
    imports the CLI: seconds, in which an upload this size may finish)."""
    (state,) = (Path(env["XDG_RUNTIME_DIR"]) / "reelflow").glob("runner-*.json")
    info = json.loads(state.read_text())
    pid = int(info["pid"])
    kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return pid, [int(k) for k in kids if int(k) != info["api_pid"]]


def _wait_for_parts(s3: Any, bucket: str, proc: subprocess.Popen[bytes]) -> None:
    def enough() -> bool:
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]  # type: ignore[union-attr]
        for up in s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []):
            listed = s3.list_parts(Bucket=bucket, Key=up["Key"], UploadId=up["UploadId"])
            if len(listed.get("Parts", [])) >= PARTS_BEFORE_KILL:
                return True
        return False

    wait_for(enough, f"{PARTS_BEFORE_KILL} parts in the store", timeout_s=300, poll_s=0.02)


def _parts_done(s3: Any, bucket: str) -> int:
    up = s3.list_multipart_uploads(Bucket=bucket)["Uploads"][0]
    return len(s3.list_parts(Bucket=bucket, Key=up["Key"], UploadId=up["UploadId"])["Parts"])


def _resumes(
    env: dict[str, str], cmd: list[str], s3_server: Any, bucket: str, parts_total: int
) -> dict[str, Any]:
    """The next call finishes the upload sending only what was missing (+ what was in flight)."""
    s3 = s3_server.client()
    done_before = _parts_done(s3, bucket)
    assert PARTS_BEFORE_KILL <= done_before < parts_total
    s3_server.reset_stats()
    summary = summary_of(run(env, *cmd))
    sent = s3_server.stats().get("UploadPart", 0)
    assert sent <= (parts_total - done_before) + CONCURRENCY, (sent, parts_total, done_before)
    assert summary["chunks_total"] == parts_total
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    return summary


def _start_big_ingest(
    env: dict[str, str], clips: Any
) -> tuple[list[str], int, subprocess.Popen[bytes]]:
    clip = clips.large(100 * MIB)
    parts_total = math.ceil(clip.stat().st_size / CHUNK)
    cmd = ["ingest", str(clip), "--chunk-size", str(CHUNK), "--concurrency", str(CONCURRENCY)]
    cmd.append("--json")
    proc = subprocess.Popen(launcher(*cmd), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return cmd, parts_total, proc


@pytest.mark.slow
def test_sigkill_of_the_caller_kills_its_child_and_the_next_call_resumes(
    runners: Runners, prefect_api: str, s3_server: Any, bucket: str, clips: Any
) -> None:
    """SIGKILL the CLI (not its group) mid-upload: the runner's child dies with it (EOF), and
    the next call, served by the same runner, sends only the missing parts."""
    env = runners.env(PREFECT_API_URL=prefect_api)
    cmd, parts_total, proc = _start_big_ingest(env, clips)
    _wait_for_parts(s3_server.client(), bucket, proc)
    runner_pid, children = runner_children(env)
    proc.kill()
    proc.wait(timeout=30)
    assert len(children) == 1
    wait_for(lambda: not alive(children[0]), "the caller's child to die", timeout_s=10, poll_s=0.05)
    _resumes(env, cmd, s3_server, bucket, parts_total)
    after = runner_status(env)
    assert after is not None and after["pid"] == runner_pid and after["children"] == []


@pytest.mark.slow
def test_sigkill_of_the_runner_and_child_then_a_new_runner_resumes(
    runners: Runners, prefect_api: str, s3_server: Any, bucket: str, clips: Any
) -> None:
    """SIGKILL the runner and its child mid-upload: the caller fails (exit 1, one line), the
    next call starts a new runner and sends only the missing parts."""
    env = runners.env(PREFECT_API_URL=prefect_api)
    cmd, parts_total, proc = _start_big_ingest(env, clips)
    _wait_for_parts(s3_server.client(), bucket, proc)
    runner_pid, children = runner_children(env)
    os.kill(runner_pid, signal.SIGKILL)
    for child in children:
        os.killpg(child, signal.SIGKILL)
    _out, err = proc.communicate(timeout=30)
    assert len(children) == 1
    assert proc.returncode == 1
    assert err.decode().strip().splitlines()[-1].startswith("error: runner_lost: ")
    _resumes(env, cmd, s3_server, bucket, parts_total)
    after = runner_status(env)
    assert after is not None and after["pid"] != runner_pid


@pytest.mark.slow
def test_sigterm_to_the_caller_ends_the_run_as_in_process_and_it_resumes(
    runners: Runners, prefect_api: str, s3_server: Any, bucket: str, clips: Any
) -> None:
    """SIGTERM to the CLI reaches its child: the CLI dies of SIGTERM, as it does in process,
    and the upload resumes on the next call."""
    env = runners.env(PREFECT_API_URL=prefect_api)
    cmd, parts_total, proc = _start_big_ingest(env, clips)
    _wait_for_parts(s3_server.client(), bucket, proc)
    _runner_pid, children = runner_children(env)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    assert len(children) == 1
    assert proc.returncode == -signal.SIGTERM
    wait_for(lambda: not alive(children[0]), "the child to end", timeout_s=10)
    _resumes(env, cmd, s3_server, bucket, parts_total)


def test_another_environment_gets_another_runner(
    runners: Runners, prefect_api: str, tmp_path: Path
) -> None:
    """A different REELFLOW_HOME is another key: its own runner, the first one untouched."""
    env = runners.env(PREFECT_API_URL=prefect_api)
    other = env | {"REELFLOW_HOME": str(tmp_path / "other-home")}
    for e in (env, other):
        assert run(e, "status", "--json").returncode == 0
    one, two = runner_status(env), runner_status(other)
    assert one is not None and two is not None
    assert one["pid"] != two["pid"] and one["socket"] != two["socket"]
    assert alive(one["pid"]) and alive(two["pid"])
    assert os.stat(Path(one["socket"]).parent).st_mode & 0o777 == 0o700
    assert os.stat(one["socket"]).st_mode & 0o777 == 0o600


def test_exit_codes_and_output_are_those_of_the_cli_in_process(
    runners: Runners, prefect_api: str, clips: Any, tmp_path: Path
) -> None:
    """A refused option (2), a bad file (2), an unknown media (1), a good status (0): the same
    exit code, stdout and stderr with the runner as without it."""
    env = runners.env(PREFECT_API_URL=prefect_api)
    off = env | {"REELFLOW_RUNNER": "off"}
    bad = tmp_path / "not-a-video.mp4"
    bad.write_text("hello\n")
    good = own_clip(clips, tmp_path, "g", 7)
    cases = [
        (["ingest", str(good), "--mode", "sideways", "--json"], 2),
        (["ingest", str(bad), "--json"], 2),
        (["ingest", str(bad)], 2),
        (["status", "m_nope"], 1),
        (["status", "--json"], 0),
    ]
    for args, code in cases:
        with_runner, in_process = run(env, *args), run(off, *args)
        assert (with_runner.returncode, in_process.returncode) == (code, code), args
        assert with_runner.stdout == in_process.stdout, args
        assert with_runner.stderr == in_process.stderr, args
    status = runner_status(env)
    assert status is not None and status["children"] == []  # served, and reaped


def _on_a_terminal(env: dict[str, str], *args: str) -> tuple[int, bytes]:
    """Run the launcher with a pseudo-terminal as its stdin/stdout/stderr."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        launcher(*args), env=env, stdin=follower, stdout=follower, stderr=follower
    )
    os.close(follower)
    out = b""
    deadline = time.monotonic() + CALL_TIMEOUT_S
    while time.monotonic() < deadline:
        ready, _, _ = select.select([leader], [], [], 0.2)
        if ready:
            try:
                block = os.read(leader, 65536)
            except OSError:  # EIO: every holder of the terminal has closed it
                break
            if not block:
                break
            out += block
        elif proc.poll() is not None:
            break
    os.close(leader)
    return proc.wait(timeout=30), out


def test_the_child_sees_the_callers_terminal(runners: Runners, prefect_api: str) -> None:
    """The fds are passed, not piped: on a terminal the output is the terminal's (rich's
    styling), byte for byte what the CLI prints in process."""
    env = runners.env(PREFECT_API_URL=prefect_api, COLUMNS="100", TERM="xterm-256color")
    env.pop("NO_COLOR", None)
    code_on, on = _on_a_terminal(env, "status")
    code_off, off = _on_a_terminal(env | {"REELFLOW_RUNNER": "off"}, "status")
    assert (code_on, code_off) == (0, 0)
    assert b"\x1b[" in on  # styled: isatty() was true in the child
    assert on == off
    status = runner_status(env)
    assert status is not None


def test_sigterm_or_runner_stop_stops_the_runner_cleanly(
    runners: Runners, prefect_api: str, tmp_path: Path
) -> None:
    """SIGTERM to the runner, or `reelflow runner stop`: it exits, its socket and state file
    are gone, and the next call starts a new one."""
    for how in ("sigterm", "stop"):
        env = runners.env(PREFECT_API_URL=prefect_api, REELFLOW_HOME=str(tmp_path / how))
        assert run(env, "status", "--json").returncode == 0
        status = runner_status(env)
        assert status is not None
        if how == "sigterm":
            os.kill(status["pid"], signal.SIGTERM)
        else:
            stopped = run(env, "runner", "stop")
            assert stopped.stdout.strip() == f"stopped runner {status['pid']}", stopped
        wait_for(lambda s=status: not alive(s["pid"]), "the runner to stop", timeout_s=30)
        socket_dir = Path(status["socket"]).parent
        assert not Path(status["socket"]).exists()
        assert list(socket_dir.glob("runner-*.json")) == []
        assert runner_status(env) is None
        assert run(env, "status", "--json").returncode == 0
        again = runner_status(env)
        assert again is not None and again["pid"] != status["pid"]
