"""``--link MBIT``: a benchmark run inside a network namespace whose loopback is rate-limited.

On 127.0.0.1 the two shared cores are the limit; in production the network is. ``--link`` makes
the network the limit here: a namespace ``rfbench-<pid>`` with its ``lo`` up and a ``tc`` token
bucket (``tbf``; netem is not available) on it, and the whole benchmark driver re-run inside it
(``ip netns exec``), so the S3 server, the TikTok sandbox, the Prefect server and every
contender it starts all talk over the limited loopback. The outer process only waits and always
deletes the namespace (``finally`` and ``atexit``, bounded), ending first the processes still
inside it (all started by this benchmark).

Without root, ``ip`` or ``tc`` the mode says why and exits non-zero.

    python -m bench._netns --verify 100      a raw PUT loop inside a 100 Mbit/s namespace

Must not: touch any namespace but its own, or change the host's loopback.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import http.client
import http.server
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

NS_VAR = "RFBENCH_NETNS"  # set inside: the namespace's name
LINK_VAR = "RFBENCH_LINK_MBIT"  # set inside: the link's rate
CMD_TIMEOUT_S = 15.0
RUN_TIMEOUT_S = 6 * 3600.0
# tbf's queue: how long a packet may wait for tokens before it is dropped. TCP backs off on
# drops; a queue longer than one RTT's worth keeps the link busy without dropping.
LATENCY_MS = 50
REPO = Path(__file__).resolve().parents[1]


class LinkUnavailable(RuntimeError):
    """The machine cannot make a rate-limited namespace (no root, no ``ip`` or ``tc``)."""


def inside() -> bool:
    return NS_VAR in os.environ


def link_mbit() -> float | None:
    """The rate of the link this process runs behind, or None on the plain loopback."""
    value = os.environ.get(LINK_VAR)
    return float(value) if value else None


def burst_bytes(mbit: float) -> int:
    """tbf's bucket: 10 ms of the rate, and never under 256 KiB. Loopback's MTU is 64 KiB and
    its segments can be that big; a bucket smaller than a segment never lets it through."""
    return max(256 * 1024, int(mbit * 1e6 / 8 / 100))


def check_possible() -> None:
    if os.geteuid() != 0:
        raise LinkUnavailable("--link needs root (ip netns add, tc qdisc); run as root")
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            raise LinkUnavailable(f"--link needs `{tool}` (iproute2), which is not installed")


def _run(cmd: Sequence[str]) -> None:
    out = subprocess.run(list(cmd), capture_output=True, text=True, timeout=CMD_TIMEOUT_S)
    if out.returncode != 0:
        raise LinkUnavailable(f"`{' '.join(cmd)}` failed: {out.stderr.strip()}")


class Namespace:
    """``rfbench-<pid>`` with a rate-limited ``lo``; :meth:`delete` is idempotent and bounded."""

    def __init__(self, mbit: float) -> None:
        check_possible()
        self.name = f"rfbench-{os.getpid()}"
        self.mbit = mbit
        self._deleted = False
        atexit.register(self.delete)
        _run(["ip", "netns", "add", self.name])
        try:
            self.exec(["ip", "link", "set", "lo", "up"])
            self.exec(
                ["tc", "qdisc", "add", "dev", "lo", "root", "tbf", "rate", f"{mbit}mbit",
                 "burst", str(burst_bytes(mbit)), "latency", f"{LATENCY_MS}ms"]
            )  # fmt: skip
        except BaseException:
            self.delete()
            raise

    def wrap(self, cmd: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *cmd]

    def exec(self, cmd: Sequence[str]) -> None:
        _run(self.wrap(cmd))

    def qdisc(self) -> str:
        out = subprocess.run(
            self.wrap(["tc", "-s", "qdisc", "show", "dev", "lo"]),
            capture_output=True, text=True, timeout=CMD_TIMEOUT_S,
        )  # fmt: skip
        return out.stdout.strip()

    def delete(self) -> None:
        if self._deleted:
            return
        self._deleted = True
        # Whatever still runs inside was started by this benchmark: end it by pid, bounded.
        for sig, wait_s in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            pids = self._pids()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + wait_s
            while pids and time.monotonic() < deadline:
                time.sleep(0.1)
                pids = self._pids()
            if not pids:
                break
        subprocess.run(
            ["ip", "netns", "del", self.name], capture_output=True, timeout=CMD_TIMEOUT_S
        )

    def _pids(self) -> list[int]:
        try:
            out = subprocess.run(
                ["ip", "netns", "pids", self.name],
                capture_output=True, text=True, timeout=CMD_TIMEOUT_S,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            return []
        return [int(p) for p in out.stdout.split() if p.strip().isdigit()]


def rerun_inside(mbit: float, module: str, argv: Sequence[str]) -> int:
    """Run ``python -m module argv`` (this benchmark, minus nothing: it sees it is inside) in a
    fresh rate-limited namespace; return its exit code. Prints why and returns 2 if the machine
    cannot make one."""
    try:
        ns = Namespace(mbit)
    except LinkUnavailable as exc:
        print(f"--link {mbit:g}: {exc}", file=sys.stderr)
        return 2
    # SIGTERM/SIGINT on the driver still deletes the namespace (via finally).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        print(f"namespace {ns.name}: lo limited to {mbit:g} Mbit/s (tbf, burst "
              f"{burst_bytes(mbit)} B, latency {LATENCY_MS} ms)", flush=True)  # fmt: skip
        env = os.environ | {NS_VAR: ns.name, LINK_VAR: f"{mbit:g}"}
        cmd = ns.wrap([sys.executable, "-m", module, *argv])
        code = subprocess.run(cmd, env=env, cwd=REPO, timeout=RUN_TIMEOUT_S).returncode
        print(ns.qdisc(), flush=True)
        return code
    finally:
        ns.delete()


def rate_of_link(nbytes: int, seconds: float) -> dict[str, float]:
    """Mbit/s of ``nbytes`` in ``seconds``, and its fraction of the link (when there is one)."""
    mbit_s = nbytes * 8 / seconds / 1e6
    link = link_mbit()
    out = {"mbit_s": round(mbit_s, 1)}
    if link:
        out["of_link"] = round(mbit_s / link, 3)
    return out


# ----- the limiter's own check: a raw PUT loop over the limited loopback -----------------------


class _Sink(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_PUT(self) -> None:  # noqa: N802 (http.server's naming)
        left = int(self.headers["Content-Length"])
        while left:
            left -= len(self.rfile.read(min(left, 1 << 20)))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def put_loop(seconds: float, body_bytes: int) -> dict[str, float]:
    """PUT ``body_bytes`` bodies over one kept-alive connection to a sink on 127.0.0.1 for about
    ``seconds``; the measured rate (a bounded loop: it stops after the time is up)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    body = os.urandom(body_bytes)
    sent = 0
    conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=60)
    try:
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            conn.request("PUT", "/sink", body=body)
            conn.getresponse().read()
            sent += body_bytes
        elapsed = time.perf_counter() - t0
    finally:
        conn.close()
        server.shutdown()
    return {"bytes": sent, "seconds": round(elapsed, 3), **rate_of_link(sent, elapsed)}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--verify", type=float, metavar="MBIT", required=True)
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--body-bytes", type=int, default=8 * 2**20)
    args = p.parse_args()
    if not inside():
        return rerun_inside(args.verify, "bench._netns", sys.argv[1:])
    print(f"raw PUT loop, {args.body_bytes} B bodies: {put_loop(args.seconds, args.body_bytes)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
