"""One measured run in a fresh process, so its peak RSS is its own. Prints one JSON line.

python -m bench._one baseline FILE --endpoint URL --bucket B --chunk N --concurrency C
python -m bench._one reelflow FILE --endpoint URL --bucket B --chunk N --concurrency C

``cpu_s`` is the client CPU-seconds (user+system, psutil) of this process and its children
during the upload alone: boto3's ``upload_file`` call, or reelflow's chunk upload + assemble
(the flow's ``send_source`` and ``assemble_upload``, wrapped here; validate, verify and
thumbnail are not part of the upload-only comparison).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
from typing import Any

import psutil

from bench._measure import CpuInCalls, tree_cpu_s


def rss_mib() -> float:
    return float(psutil.Process().memory_info().rss) / 2**20


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def baseline(args: argparse.Namespace) -> dict[str, Any]:
    from bench._moto import boto3_upload_s, s3_client  # lazy: only this mode loads boto3

    s3 = s3_client(args.endpoint)
    before = rss_mib()
    cpu0 = tree_cpu_s()
    seconds = boto3_upload_s(s3, args.file, args.bucket, args.chunk, args.concurrency)
    return {
        "seconds": seconds,
        "cpu_s": tree_cpu_s() - cpu0,
        "rss_before_mib": before,
        "peak_rss_mib": peak_rss_mib(),
    }


def reelflow_run(args: argparse.Namespace) -> dict[str, Any]:
    os.environ["REELFLOW_STORE_URL"] = f"s3://{args.bucket}/reelflow"
    os.environ["REELFLOW_S3_ENDPOINT_URL"] = args.endpoint
    if args.window_bytes is not None:  # the task unit: parts per upload-window task run
        os.environ["REELFLOW_TASK_WINDOW_BYTES"] = str(args.window_bytes)
    import flows.ingest as ingest_module
    from flows.ingest import ingest_video
    from reelflow.cli_errors import quiet_prefect_console as _quiet_prefect_console

    _quiet_prefect_console()  # as `reelflow ingest` runs it (the API still gets every log)
    cold = rss_mib()
    if args.warmup:
        # A tiny ingest first: Prefect's engine, clients and thread pools are loaded once per
        # process; what is measured next is the growth that comes with the data.
        ingest_video(source=args.warmup)
    upload_cpu = CpuInCalls()
    # The upload's two calls, as the flow module names them; if a later design renames them
    # the whole flow's CPU is reported instead (``cpu_scope`` says which).
    wrapped = [n for n in ("send_source", "assemble_upload") if hasattr(ingest_module, n)]
    for name in wrapped:
        setattr(ingest_module, name, upload_cpu.wrap(getattr(ingest_module, name)))
    before = rss_mib()
    cpu0 = tree_cpu_s()
    summary = ingest_video(
        source=args.file, chunk_size_bytes=args.chunk, concurrency=args.concurrency
    )
    flow_cpu = tree_cpu_s() - cpu0
    t = summary["timings_s"]
    scoped = len(wrapped) == 2 and upload_cpu.calls >= 2
    return {
        "seconds": t["upload"] + t["assemble"],
        "cpu_s": upload_cpu.cpu_s if scoped else flow_cpu,
        "cpu_scope": "upload+assemble" if scoped else "whole flow",
        "flow_cpu_s": flow_cpu,
        "validate_s": t["validate"],
        "thumbnail_s": t["thumbnail"],
        "rss_before_mib": before,
        "rss_cold_mib": cold,
        "peak_rss_mib": peak_rss_mib(),
        "chunks": summary["chunks_uploaded_this_run"],
        "upload_s": t["upload"],
        "assemble_s": t["assemble"],
    }


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["baseline", "reelflow"])
    p.add_argument("file")
    p.add_argument("--endpoint", required=True)
    p.add_argument("--bucket", required=True)
    p.add_argument("--chunk", type=int, required=True)
    p.add_argument("--concurrency", type=int, required=True)
    p.add_argument("--warmup", default=None, help="a small clip ingested before measuring")
    p.add_argument("--window-bytes", type=int, default=None, help="REELFLOW_TASK_WINDOW_BYTES")
    args = p.parse_args()
    out = baseline(args) if args.mode == "baseline" else reelflow_run(args)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
