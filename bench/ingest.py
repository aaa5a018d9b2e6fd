"""Benchmark: reelflow's chunk-upload + assemble vs boto3 ``upload_file``, same server, same run.

Generates (and caches under bench/.data) a 100 MiB and a >= 1 GiB valid H.264 video, starts
moto's S3 server on 127.0.0.1, and runs each contender in a fresh process (so peak RSS is its
own), alternating order. Prints throughput ratios (reelflow / boto3, higher is better; target
>= 1.0), peak RSS and RSS growth during the run (target <= 64 MiB), validate and thumbnail times,
and each contender's client CPU-seconds per GiB during the upload (psutil: user+system of the
contender's process and its children around the upload call) with their ratio reelflow / boto3
(lower is better; target <= 1.15).

    python -m bench.ingest [--repeat 2] [--chunk 8388608] [--concurrency 4] [--big-mib 1024]
                           [--small-mib 100] [--prefect server|server+services|ephemeral]
                           [--link MBIT] [--window-bytes N[,N...]]

``--window-bytes`` runs one reelflow contender per value (REELFLOW_TASK_WINDOW_BYTES; a value
at or below the chunk size is one part per task run), each paired with the same boto3 rounds.

``--prefect`` (default ``server``) is where reelflow's Prefect API lives: a dedicated server
without its background services, as bench.publish explains; ``ephemeral`` is what a bare
``reelflow ingest`` starts in its own process tree on the same cores.

``--link MBIT`` runs all of it (moto, the Prefect server, both contenders) in a network namespace
whose loopback is limited to MBIT Mbit/s (bench/_netns.py), so the network is the limit, not the
two shared cores; each contender's rate is then also shown as a fraction of the link (targets at
``--link 800``: ratio >= 1.0, reelflow >= 0.95 of the link). Needs root and ``tc``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import _moto as moto
from bench import _netns as netns
from bench.publish import PREFECT_MODES, start_prefect

MIB = 2**20
GIB = 2**30


def run_one(
    mode: str,
    file: Path,
    endpoint: str,
    bucket: str,
    chunk: int,
    conc: int,
    env: dict[str, str],
    warmup: Path | None = None,
    window_bytes: int | None = None,
) -> dict[str, Any]:
    cmd = [
        sys.executable,
        "-m",
        "bench._one",
        mode,
        str(file),
        "--endpoint",
        endpoint,
        "--bucket",
        bucket,
        "--chunk",
        str(chunk),
        "--concurrency",
        str(conc),
    ]
    if warmup is not None and mode == "reelflow":
        cmd += ["--warmup", str(warmup)]
    if window_bytes is not None and mode == "reelflow":
        cmd += ["--window-bytes", str(window_bytes)]
    out = subprocess.run(
        cmd,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
        cwd=moto.REPO,
    )
    if out.returncode != 0:
        raise RuntimeError(f"{mode} failed: {out.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def _row(
    label: str,
    size: int,
    window: int | None,
    base_runs: list[dict[str, Any]],
    rf_runs: list[dict[str, Any]],
) -> dict[str, Any]:
    """One input's figures for one reelflow contender (task window) against the boto3 rounds."""
    size_mib = size / MIB
    b = statistics.median(r["seconds"] for r in base_runs)
    f = statistics.median(r["seconds"] for r in rf_runs)
    b_cpu = statistics.median(r["cpu_s"] for r in base_runs) / (size / GIB)
    f_cpu = statistics.median(r["cpu_s"] for r in rf_runs) / (size / GIB)
    link: dict[str, Any] = {}
    if netns.link_mbit():
        link = {
            "link_mbit": netns.link_mbit(),
            "boto3_of_link": netns.rate_of_link(size, b)["of_link"],
            "reelflow_of_link": netns.rate_of_link(size, f)["of_link"],
            # The parts alone: assemble (CompleteMultipartUpload, the SHA-256 check)
            # sends no payload over the link.
            "reelflow_upload_of_link": netns.rate_of_link(
                size, statistics.median(r["upload_s"] for r in rf_runs)
            )["of_link"],
        }
    return {
        "input": f"{label} ({size_mib:.0f} MiB)",
        "window_bytes": "default" if window is None else window,
        "boto3_mib_s": size_mib / b,
        "reelflow_mib_s": size_mib / f,
        "ratio": b / f,
        # Rounds are paired: the median of per-round ratios cancels drift.
        "ratio_paired": statistics.median(
            x["seconds"] / y["seconds"] for x, y in zip(base_runs, rf_runs, strict=True)
        ),
        **link,
        "boto3_cpu_s_per_gib": b_cpu,
        "reelflow_cpu_s_per_gib": f_cpu,
        "cpu_ratio": f_cpu / b_cpu,
        "reelflow_cpu_scope": rf_runs[0].get("cpu_scope", "?"),
        "reelflow_peak_rss_mib": max(r["peak_rss_mib"] for r in rf_runs),
        "reelflow_rss_growth_mib": max(r["peak_rss_mib"] - r["rss_before_mib"] for r in rf_runs),
        "reelflow_rss_growth_cold_mib": max(r["peak_rss_mib"] - r["rss_cold_mib"] for r in rf_runs),
        "reelflow_upload_s": statistics.median(r["upload_s"] for r in rf_runs),
        "reelflow_assemble_s": statistics.median(r["assemble_s"] for r in rf_runs),
        "boto3_rss_growth_mib": max(r["peak_rss_mib"] - r["rss_before_mib"] for r in base_runs),
        "validate_s": statistics.median(r["validate_s"] for r in rf_runs),
        "thumbnail_s": statistics.median(r["thumbnail_s"] for r in rf_runs),
    }


def main() -> int:
    moto.use_moto_credentials()
    p = argparse.ArgumentParser()
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--chunk", type=int, default=8 * MIB)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--big-mib", type=int, default=1024)
    p.add_argument("--small-mib", type=int, default=100)
    p.add_argument("--prefect", choices=PREFECT_MODES, default="server")
    p.add_argument("--link", type=float, metavar="MBIT", help="rate-limited loopback (root, tc)")
    p.add_argument("--window-bytes", default="", help="comma-separated task window sizes")
    args = p.parse_args()
    windows: list[int | None] = [int(w) for w in args.window_bytes.split(",") if w] or [None]
    if args.link and not netns.inside():
        return netns.rerun_inside(args.link, "bench.ingest", sys.argv[1:])
    files = {
        f"{args.small_mib}MiB": moto.cached_clip(
            f"bench-{args.small_mib}mib.mp4", args.small_mib * MIB
        ),
        f"{args.big_mib}MiB": moto.cached_clip(f"bench-{args.big_mib}mib.mp4", args.big_mib * MIB),
    }
    warmup = moto.warmup_clip()
    server, endpoint = moto.start_s3()
    prefect: subprocess.Popen[bytes] | None = None
    prefect_env: dict[str, str] = {}
    if args.prefect != "ephemeral":
        prefect_env["PREFECT_HOME"] = tempfile.mkdtemp(prefix="reelflow-bench-prefect-")
        prefect, prefect_env["PREFECT_API_URL"] = start_prefect(
            os.environ | prefect_env, services=args.prefect == "server+services"
        )
    try:
        s3 = moto.s3_client(endpoint)
        rows = []
        for label, file in files.items():
            base_runs: list[dict[str, Any]] = []
            rf_by_window: dict[int | None, list[dict[str, Any]]] = {w: [] for w in windows}
            for i in range(args.repeat):
                contenders: list[tuple[str, int | None]] = [("baseline", None)]
                contenders += [("reelflow", w) for w in windows]
                order = contenders if i % 2 == 0 else contenders[::-1]
                for j, (mode, w) in enumerate(order):
                    # A bucket and home per contender: a second reelflow run in the same
                    # bucket would find the video stored already and upload nothing.
                    bucket = f"bench-{label.lower()}-{i}-{j}-{int(time.time())}"
                    s3.create_bucket(Bucket=bucket)
                    env = os.environ | {
                        "REELFLOW_HOME": tempfile.mkdtemp(prefix="reelflow-bench-"),
                        **moto.MOTO_CREDENTIALS,
                        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                        **prefect_env,
                    }
                    r = run_one(
                        mode, file, endpoint, bucket, args.chunk, args.concurrency, env, warmup, w
                    )
                    (base_runs if mode == "baseline" else rf_by_window[w]).append(r)
            for w, rf_runs in rf_by_window.items():
                rows.append(_row(label, file.stat().st_size, w, base_runs, rf_runs))
    finally:
        server.terminate()
        server.wait(timeout=30)
        if prefect is not None:
            os.killpg(prefect.pid, signal.SIGTERM)
            prefect.wait(timeout=30)
    where = f"behind a {netns.link_mbit():g} Mbit/s link" if netns.link_mbit() else "on 127.0.0.1"
    print(
        f"\nchunk {args.chunk // MIB} MiB, concurrency {args.concurrency}, repeat {args.repeat}, "
        f"moto S3 {where}, Prefect: {args.prefect}, load {os.getloadavg()[0]:.2f}"
    )
    header = list(rows[0])
    print(" | ".join(header))
    for r in rows:
        print(" | ".join(f"{v:.2f}" if isinstance(v, float) else str(v) for v in r.values()))
    # Memory must not grow with the file: the big file's peak against the small one's.
    growth = rows[-1]["reelflow_peak_rss_mib"] - rows[0]["reelflow_peak_rss_mib"]
    print(f"reelflow peak RSS {rows[0]['input']} -> {rows[-1]['input']}: {growth:+.1f} MiB")
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
