"""Benchmark: reelflow's TikTok upload leg vs a raw sequential ``requests`` PUT loop.

Both contenders send the same file, in the same chunk plan, to the same sandbox (in this
process, real HTTP on 127.0.0.1), in the same run; each runs in a fresh process, so its peak RSS
is its own, and the order alternates. "reelflow" is the ``publish-media`` flow (creator_info,
init, one Prefect task per chunk streamed from the local store, ledger writes, progress
artifact, status poll); its upload-leg time is the chunk loop alone (``timings_s.upload``).
"raw" is ``requests.Session().put`` per chunk on bytes read from the file, with an upload URL
this process initialised. Target: ratio (raw time / reelflow time) >= 0.97.

Client CPU-seconds per GiB of each contender during the leg (psutil, user+system of its process
and children: around the raw loop; around reelflow's ``send_chunks``), and their ratio.
``--link MBIT`` runs everything (sandbox, Prefect server, contenders) in a network namespace
whose loopback is limited to MBIT Mbit/s (bench/_netns.py; needs root and ``tc``), and shows each
contender's rate as a fraction of the link.

    python -m bench.publish [--repeat 3] [--mib 256] [--chunk-bytes 10000000]
                            [--prefect server|server+services|ephemeral] [--link MBIT]
    python -m bench.publish --one raw|reelflow ...      (one contender; used by the driver)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import _netns as netns
from bench._measure import CpuInCalls, tree_cpu_s

DEFAULT_PREFERRED_CHUNK_BYTES = 10_000_000  # reelflow.tiktok.plan's default
DATA = Path(__file__).resolve().parent / ".data"
REPO = Path(__file__).resolve().parents[1]
MIB = 2**20
PREFECT_START_TIMEOUT_S = 120.0


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def rss_mib() -> float:
    import psutil

    return float(psutil.Process().memory_info().rss) / MIB


# ----- contenders (each in its own process) ----------------------------------------------------


def run_raw(args: argparse.Namespace) -> dict[str, float]:
    import requests

    from reelflow.tiktok.plan import plan_tiktok_upload_with_chunk_size

    url = os.environ["BENCH_UPLOAD_URL"]
    size = Path(args.file).stat().st_size
    plan = plan_tiktok_upload_with_chunk_size(size, args.chunk)
    before = rss_mib()
    cpu0 = tree_cpu_s()
    t0 = time.perf_counter()
    with requests.Session() as session, open(args.file, "rb") as fh:
        for chunk in plan.chunks:
            fh.seek(chunk.first_byte)
            body = fh.read(chunk.length)
            resp = session.put(
                url,
                data=body,
                headers={
                    "Content-Type": "video/mp4",
                    "Content-Range": f"bytes {chunk.first_byte}-{chunk.last_byte}/{size}",
                },
                timeout=(5, 120),
            )
            if resp.status_code not in (201, 206):
                raise RuntimeError(f"raw PUT answered {resp.status_code}")
    seconds = time.perf_counter() - t0
    cpu_s = tree_cpu_s() - cpu0
    return {
        "seconds": seconds,
        "cpu_s": cpu_s,
        "rss_before_mib": before,
        "peak_rss_mib": peak_rss_mib(),
    }


def run_reelflow(args: argparse.Namespace) -> dict[str, Any]:
    import flows.publish as publish_module
    from flows.publish import publish_media
    from reelflow.cli_errors import quiet_prefect_console as _quiet_prefect_console
    from reelflow.tiktok.client import TikTokClient

    _quiet_prefect_console()  # as `reelflow publish` runs it (the API still gets every log)
    # Time inside the PUTs themselves, to split the leg into wire time and orchestration.
    in_put = [0.0]
    put_chunk = TikTokClient.put_chunk

    def timed_put(self: Any, *a: Any, **k: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return put_chunk(self, *a, **k)
        finally:
            in_put[0] += time.perf_counter() - t0

    TikTokClient.put_chunk = timed_put  # type: ignore[method-assign]
    # The leg's CPU: inside the flow's chunk loop, as the flow module names it (the whole flow's
    # when a later design renames it; ``cpu_scope`` says which).
    leg_cpu = CpuInCalls()
    scoped = hasattr(publish_module, "send_chunks")
    if scoped:
        publish_module.send_chunks = leg_cpu.wrap(publish_module.send_chunks)  # type: ignore[attr-defined]
    before = rss_mib()
    cpu0 = tree_cpu_s()
    summary = publish_media(
        media_id=args.media_id,
        account=args.account,
        caption=args.caption,
        chunk_size_bytes=args.chunk,
    )
    flow_cpu = tree_cpu_s() - cpu0
    if summary["status"] != "PUBLISH_COMPLETE":
        raise RuntimeError(f"publish ended {summary['status']}")
    scoped = scoped and leg_cpu.calls > 0
    return {
        "seconds": summary["timings_s"]["upload"],
        "cpu_s": leg_cpu.cpu_s if scoped else flow_cpu,
        "cpu_scope": "send_chunks" if scoped else "whole flow",
        "flow_cpu_s": flow_cpu,
        "put_s": in_put[0],
        "total_s": sum(summary["timings_s"].values()),
        "chunks": summary["chunks_sent_this_run"],
        "rss_before_mib": before,
        "peak_rss_mib": peak_rss_mib(),
    }


# ----- driver ----------------------------------------------------------------------------------


def bench_file(mib: int) -> Path:
    """A valid MP4 of ``mib`` MiB: a short clip plus a trailing ``free`` box (cached)."""
    from reelflow.samples import make_clip

    path = DATA / f"publish-{mib}mib.mp4"
    if not path.exists():
        DATA.mkdir(parents=True, exist_ok=True)
        make_clip(path, duration_s=5, extra_bytes=mib * MIB - 400_000)
    return path


def sandbox_dir(work: Path) -> Path:
    """Where the sandbox keeps what it receives: in memory (tmpfs) when the machine has one.

    On disk, the kernel's background writeback of earlier rounds' gigabytes landed in later
    rounds at random and moved single legs by up to 2x (measured), for both contenders alike.
    TikTok's own storage is not what this bench measures.
    """
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        return shm / f"reelflow-bench-sandbox-{work.name}"
    return work / "sandbox"


PREFECT_MODES = ("server", "server+services", "ephemeral")


def start_prefect(
    env: dict[str, str], *, services: bool = False
) -> tuple[subprocess.Popen[bytes], str]:
    """A Prefect server for the whole bench, as production has one (no per-child startup).

    Without ``services`` it answers every API call the contenders make but runs none of its
    background recorders (task-run recorder, event persister, triggers): in production those
    run on the server's own host, here they would take CPU from the two cores the contenders,
    the sandbox and the S3 server share. ``--prefect server+services`` measures that case too.
    """
    import socket
    import urllib.request

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1"]
    cmd += ["--port", str(port)] + ([] if services else ["--no-services"])
    proc = subprocess.Popen(
        cmd,
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + PREFECT_START_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
                if resp.status == 200:
                    return proc, url
        except OSError:
            time.sleep(0.25)
    os.killpg(proc.pid, signal.SIGKILL)
    raise RuntimeError("the Prefect server did not start")


def one(mode: str, extra: list[str], env: dict[str, str]) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "bench.publish", "--one", mode, *extra]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800, cwd=REPO)
    if out.returncode != 0:
        raise RuntimeError(f"{mode} failed: {out.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def drive(args: argparse.Namespace) -> int:
    from reelflow.tiktok.plan import plan_tiktok_upload
    from reelflow.tiktok.sandbox import SandboxConfig

    file = bench_file(args.mib)
    size = file.stat().st_size
    plan = plan_tiktok_upload(size, args.chunk_bytes)
    work = Path(tempfile.mkdtemp(prefix="reelflow-bench-publish-"))
    env = os.environ | {
        "REELFLOW_HOME": str(work / "home"),
        "PREFECT_HOME": str(work / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore",
    }
    config = SandboxConfig(processing_delay_s=0.0)
    raw_runs: list[dict[str, Any]] = []
    rf_runs: list[dict[str, Any]] = []
    server = None
    if args.prefect != "ephemeral":
        services = args.prefect == "server+services"
        server, env["PREFECT_API_URL"] = start_prefect(env, services=services)
    try:
        posts = _rounds(args, file, plan, env, config, work, raw_runs, rf_runs)
    finally:
        if server is not None:  # the server and the uvicorn it may have started
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)
        # Every round leaves a stored copy and the sandbox's received bytes: GBs per run.
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(sandbox_dir(work), ignore_errors=True)
    _report(args, size, plan, raw_runs, rf_runs, posts)
    return 0


def _rounds(
    args: argparse.Namespace,
    file: Path,
    plan: Any,
    env: dict[str, str],
    config: Any,
    work: Path,
    raw_runs: list[dict[str, Any]],
    rf_runs: list[dict[str, Any]],
) -> int:
    from reelflow.settings import Settings
    from reelflow.tiktok.client import TikTokClient
    from reelflow.tiktok.sandbox import start_sandbox

    size = file.stat().st_size
    with start_sandbox(config, data_dir=sandbox_dir(work)) as sb:
        env["REELFLOW_TIKTOK_API_BASE"] = sb.base_url
        ingest = subprocess.run(
            [sys.executable, "-m", "reelflow.cli", "ingest", str(file), "--json"],
            env=env, capture_output=True, text=True, timeout=1800, cwd=REPO,
        )  # fmt: skip
        if ingest.returncode != 0:
            raise RuntimeError(ingest.stderr[-3000:])
        media_id = json.loads(ingest.stdout.strip().splitlines()[-1])["media_id"]
        os.environ.update({"REELFLOW_HOME": env["REELFLOW_HOME"]})
        from storage.accounts import save_account
        from storage.crypto import secret_box
        from storage.runtime import Runtime

        rt = Runtime.from_settings(Settings())
        for i in range(args.repeat):
            # A fresh creator per round: TikTok's init limit (6/min) is per user.
            created = sb.state.create_account(f"bench{i}")
            save_account(
                rt.catalog.engine, secret_box(rt.settings), f"bench{i}",
                access_token=created["access_token"], refresh_token=created["refresh_token"],
                expires_in=created["expires_in"], refresh_expires_in=created["refresh_expires_in"],
                open_id=created["open_id"], scopes=created["scope"],
            )  # fmt: skip
            order = ["raw", "reelflow"] if i % 2 == 0 else ["reelflow", "raw"]
            for mode in order:
                if mode == "raw":
                    with TikTokClient(
                        sb.base_url,
                        client_key=config.client_key,
                        client_secret=config.client_secret,
                    ) as client:
                        init = client.init_direct_post(
                            created["access_token"],
                            post_info={"privacy_level": "SELF_ONLY"},
                            video_size=size,
                            chunk_size=plan.chunk_size,
                            total_chunk_count=plan.total_chunk_count,
                        )
                    raw_env = env | {"BENCH_UPLOAD_URL": init.upload_url}
                    extra = ["--file", str(file), "--chunk", str(plan.chunk_size)]
                    raw_runs.append(one("raw", extra, raw_env))
                else:
                    extra = ["--media-id", media_id, "--account", f"bench{i}"]
                    extra += ["--chunk", str(args.chunk_bytes)]
                    rf_runs.append(one("reelflow", [*extra, "--caption", f"run {i}"], env))
        posts: int = sb.state.stats()["posts"]
    return posts


def _report(
    args: argparse.Namespace,
    size: int,
    plan: Any,
    raw_runs: list[dict[str, Any]],
    rf_runs: list[dict[str, Any]],
    posts: int,
) -> None:
    size_mib = size / MIB
    raw_s = statistics.median(r["seconds"] for r in raw_runs)
    rf_s = statistics.median(r["seconds"] for r in rf_runs)
    # Rounds are paired (same creator, back to back, alternating order): the median of the
    # per-round ratios cancels the machine's drift between rounds; best-of shows the floor.
    paired = statistics.median(
        r["seconds"] / f["seconds"] for r, f in zip(raw_runs, rf_runs, strict=True)
    )
    best = min(r["seconds"] for r in raw_runs) / min(r["seconds"] for r in rf_runs)
    gib = size / 2**30
    raw_cpu = statistics.median(r["cpu_s"] for r in raw_runs) / gib
    rf_cpu = statistics.median(r["cpu_s"] for r in rf_runs) / gib
    link: dict[str, Any] = {}
    if netns.link_mbit():
        link = {
            "link_mbit": netns.link_mbit(),
            "raw_of_link": netns.rate_of_link(size, raw_s)["of_link"],
            "reelflow_of_link": netns.rate_of_link(size, rf_s)["of_link"],
        }
    row = {
        "file_mib": round(size_mib, 1),
        "chunk_bytes": plan.chunk_size,
        "chunks": plan.total_chunk_count,
        "repeat": args.repeat,
        "raw_mib_s": round(size_mib / raw_s, 1),
        "reelflow_mib_s": round(size_mib / rf_s, 1),
        "ratio": round(paired, 3),
        "ratio_of_medians": round(raw_s / rf_s, 3),
        "ratio_best_of": round(best, 3),
        **link,
        "raw_cpu_s_per_gib": round(raw_cpu, 2),
        "reelflow_cpu_s_per_gib": round(rf_cpu, 2),
        "cpu_ratio": round(rf_cpu / raw_cpu, 3),
        "reelflow_cpu_scope": rf_runs[0].get("cpu_scope", "?"),
        "reelflow_put_s": round(statistics.median(r["put_s"] for r in rf_runs), 3),
        "reelflow_leg_s": round(rf_s, 3),
        "raw_leg_s": round(raw_s, 3),
        "reelflow_total_s": round(statistics.median(r["total_s"] for r in rf_runs), 2),
        "reelflow_peak_rss_mib": round(max(r["peak_rss_mib"] for r in rf_runs), 1),
        "reelflow_rss_growth_mib": round(
            max(r["peak_rss_mib"] - r["rss_before_mib"] for r in rf_runs), 1
        ),
        "raw_peak_rss_mib": round(max(r["peak_rss_mib"] for r in raw_runs), 1),
        "raw_rss_growth_mib": round(
            max(r["peak_rss_mib"] - r["rss_before_mib"] for r in raw_runs), 1
        ),
        "posts": posts,
    }
    where = f"behind a {netns.link_mbit():g} Mbit/s link" if netns.link_mbit() else "on 127.0.0.1"
    print(
        f"\nTikTok upload leg, sandbox {where}, {args.repeat} paired rounds, "
        f"Prefect: {args.prefect}, load {os.getloadavg()[0]:.2f}"
    )
    print(" | ".join(row))
    print(" | ".join(str(v) for v in row.values()))
    rounds = [
        (round(r["seconds"], 3), round(f["seconds"], 3))
        for r, f in zip(raw_runs, rf_runs, strict=True)
    ]
    print("rounds (raw s, reelflow s):", rounds)
    print(json.dumps(row))


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--one", choices=["raw", "reelflow"])
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--mib", type=int, default=256)
    p.add_argument("--chunk-bytes", type=int, default=DEFAULT_PREFERRED_CHUNK_BYTES)
    p.add_argument("--prefect", choices=PREFECT_MODES, default="server")
    p.add_argument("--link", type=float, metavar="MBIT", help="rate-limited loopback (root, tc)")
    p.add_argument("--file")
    p.add_argument("--chunk", type=int)
    p.add_argument("--media-id")
    p.add_argument("--account")
    p.add_argument("--caption")
    args = p.parse_args()
    if args.link and not args.one and not netns.inside():
        return netns.rerun_inside(args.link, "bench.publish", sys.argv[1:])
    if args.one == "raw":
        print(json.dumps(run_raw(args)))
    elif args.one == "reelflow":
        print(json.dumps(run_reelflow(args)))
    else:
        return drive(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
