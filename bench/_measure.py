"""What a contender process costs: its wall time, client CPU-seconds and peak RSS, measured from
outside (the driver) or around one call inside it.

Outside, :func:`run_measured` starts the contender with a marker in its environment
(``RFBENCH_TAG``); every process that inherits it is the contender's, including a helper it
leaves running between calls (a warm runner, an embedded Prefect API) that ``wait4``'s resource
usage never sees because the contender does not reap it. CPU is ``wait4``'s user+system (the
contender and every descendant it reaped) plus what each still-living marked process spent
during the run; peak RSS is the biggest single process (``ru_maxrss``) and the sampled sum over
all marked processes.

Must not: start servers, or count the S3 server's, sandbox's or Prefect server's CPU (they carry
no marker) as the client's.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

MIB = 2**20
GIB = 2**30
TAG_VAR = "RFBENCH_TAG"
SAMPLE_INTERVAL_S = 0.05
KILL_WAIT_S = 10.0


def tree_cpu_s(proc: psutil.Process | None = None) -> float:
    """User+system CPU-seconds of ``proc`` (default: this process), its reaped children and its
    living descendants, now. Take it before and after a call: the difference is the call's."""
    me = proc or psutil.Process()
    t = me.cpu_times()
    total = t.user + t.system + t.children_user + t.children_system
    for child in me.children(recursive=True):
        try:
            c = child.cpu_times()
        except psutil.Error:  # ended between listing and reading: its parent reaps it
            continue
        total += c.user + c.system
    return float(total)


def _own_and_reaped(t: Any) -> float:
    # A helper that forks a worker per call (a warm runner) reaps it itself: the work shows in
    # the helper's children_* times, never in the contender's wait4.
    return float(t.user + t.system + t.children_user + t.children_system)


def _marked(pid: int, tag: str) -> bool:
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False
    return f"{TAG_VAR}={tag}".encode() in env.split(b"\0")


class CpuInCalls:
    """CPU-seconds of this process tree spent inside the wrapped calls. They run one after
    another on a flow's thread, so the process-wide counter between entry and exit is theirs,
    plus what the Prefect and worker threads did for them meanwhile."""

    def __init__(self) -> None:
        self.cpu_s = 0.0
        self.calls = 0

    def wrap(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*a: Any, **k: Any) -> Any:
            c0 = tree_cpu_s()
            try:
                return fn(*a, **k)
            finally:
                self.cpu_s += tree_cpu_s() - c0
                self.calls += 1

        return timed


@dataclass
class _Sampler:
    """Every marked process, sampled: RSS sum (peak kept) and each one's last CPU time."""

    tag: str
    seen: dict[int, bool] = field(default_factory=dict)  # pid -> marked
    cpu: dict[int, float] = field(default_factory=dict)  # marked pid -> last user+system
    peak_rss: int = 0
    stop: threading.Event = field(default_factory=threading.Event)

    def sample(self) -> None:
        rss = 0
        for pid in psutil.pids():
            marked = self.seen.get(pid)
            if marked is None:
                marked = self.seen[pid] = _marked(pid, self.tag)
            if not marked:
                continue
            try:
                p = psutil.Process(pid)
                with p.oneshot():
                    rss += p.memory_info().rss
                    t = p.cpu_times()
                self.cpu[pid] = _own_and_reaped(t)
            except psutil.Error:
                continue
        self.peak_rss = max(self.peak_rss, rss)

    def loop(self) -> None:
        while not self.stop.wait(SAMPLE_INTERVAL_S):
            self.sample()


def living_marked(tag: str) -> dict[int, float]:
    """Marked processes alive now: pid -> CPU-seconds so far (theirs and their reaped
    children's)."""
    out: dict[int, float] = {}
    for pid in psutil.pids():
        if _marked(pid, tag):
            try:
                t = psutil.Process(pid).cpu_times()
            except psutil.Error:
                continue
            out[pid] = _own_and_reaped(t)
    return out


def stop_marked(tag: str) -> int:
    """End the processes a contender left running (ours: they carry this bench's tag), by pid,
    TERM then KILL, bounded. Returns how many there were."""
    procs = []
    for pid in living_marked(tag):
        try:
            procs.append(psutil.Process(pid))
        except psutil.Error:
            continue
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.terminate()
    _, alive = psutil.wait_procs(procs, timeout=KILL_WAIT_S)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(alive, timeout=KILL_WAIT_S)
    return len(procs)


@dataclass
class Measured:
    """One contender run, seen from outside."""

    wall_s: float
    cpu_s: float  # the contender's tree and the helpers it keeps, during the run
    peak_rss_mib: float  # the biggest single process
    tree_peak_rss_mib: float  # sampled sum over every marked process
    stdout: str
    stderr: str
    returncode: int
    helpers_cpu_s: float  # of cpu_s: marked processes still alive after it exited

    def last_json(self) -> dict[str, Any]:
        lines = [ln for ln in self.stdout.strip().splitlines() if ln.strip()]
        if not lines:
            raise RuntimeError(f"no output; stderr: {self.stderr[-3000:]}")
        try:
            out: dict[str, Any] = json.loads(lines[-1])
        except json.JSONDecodeError:
            out = json.loads(self.stdout[self.stdout.index("{") :])
        return out


def run_measured(
    cmd: Sequence[str], env: dict[str, str], *, tag: str, cwd: Path, timeout_s: float
) -> Measured:
    """Run ``cmd`` to its end with ``tag`` in its environment; measure it (see the module)."""
    before = living_marked(tag)
    sampler = _Sampler(tag)
    out_f = _spool()
    err_f = _spool()
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        list(cmd),
        env=env | {TAG_VAR: tag},
        cwd=cwd,
        stdin=subprocess.DEVNULL,  # a contender never reads the driver's input
        stdout=out_f,
        stderr=err_f,
    )
    thread = threading.Thread(target=sampler.loop, daemon=True)
    thread.start()
    timer = threading.Timer(timeout_s, proc.kill)  # bounded: a hung contender is killed
    timer.start()
    try:
        _, status, usage = os.wait4(proc.pid, 0)
    finally:
        timer.cancel()
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    sampler.stop.set()
    thread.join(timeout=5)
    sampler.sample()  # the helpers it left running, once more after its end
    after = living_marked(tag)
    helpers = sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())
    out_f.seek(0)
    err_f.seek(0)
    return Measured(
        wall_s=wall,
        cpu_s=usage.ru_utime + usage.ru_stime + helpers,
        peak_rss_mib=usage.ru_maxrss / 1024,  # Linux: KiB
        tree_peak_rss_mib=sampler.peak_rss / MIB,
        stdout=out_f.read().decode(errors="replace"),
        stderr=err_f.read().decode(errors="replace"),
        returncode=proc.returncode,
        helpers_cpu_s=helpers,
    )


def _spool() -> Any:
    import tempfile

    # A file, not a pipe: nobody has to drain it while the driver sits in wait4.
    return tempfile.TemporaryFile()
