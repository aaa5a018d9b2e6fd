"""Benchmark: a tus client → ``reelflow gateway`` → S3 vs boto3 ``upload_file`` straight to S3,
and vs the Node tus reference server (``@tus/server`` + ``@tus/s3-store``, bench/tus_node).

Same machine, same moto S3 server (its own process, 127.0.0.1), same >= 1 GiB valid H.264 file
(generated once and cached under bench/.data, shared with bench.ingest), same part size, one run.
Paired rounds, alternating order; each gateway round has a fresh gateway process, catalog and
bucket (the same file twice would otherwise be deduplicated by its SHA-256), warmed up first by
a tiny upload so the embedded hand-off's one-time start is not measured.

- throughput: one streaming tus PATCH of the whole file (what curl and tus-js-client's default
  ``chunkSize: Infinity`` send; creation included) vs boto3 ``upload_file`` with SHA-256 part
  checksums at ``--concurrency`` (ratio = boto3 s / gateway s, median of paired rounds; target
  >= 0.9). The gateway's 204 comes when the last part is durable; S3's CompleteMultipartUpload is
  part of the hand-off, which boto3's time includes, so both are shown.
- vs ``@tus/server``: the same client (one streamed PATCH, creation included), the same file, part
  size, moto server and bucket, a fresh ``node bench/tus_node/server.mjs`` on 127.0.0.1 each
  round, warmed up the same way (ratio = @tus s / gateway s, median of paired rounds; target
  >= 1.0). Both servers send a SHA-256 checksum with every part. @tus/server's 204 comes after
  it has completed the multipart upload (CompleteMultipartUpload on the last PATCH); reelflow's
  comes earlier and it completes in assemble, so the output says so. Skipped, saying why, when
  node or bench/tus_node's ``npm ci`` is missing (or with ``--no-tus-node``).
- last byte → stored (the gateway_upload row 'stored': wall time, which on the embedded default
  includes starting the run's child process and its own Prefect API; and the run's steps:
  assemble = CompleteMultipartUpload + one read for the SHA-256, verify, thumbnail, store) vs the
  time to read the stored object once (boto3 GetObject streamed to nowhere): with no second
  upload, assemble stays within a small multiple of one read.
- parallelUploads' final (``Upload-Concat: final``), in this process on the same server and
  file: ``--parallel`` partials written once, then the final assembled by the store (UploadPartCopy,
  what the gateway does) against the old way (each partial read back and written again), paired
  rounds; the seconds of each, their ratio, and the bytes each sent to S3 (moto's count).
- gateway RSS growth (psutil, the gateway process, sampled every 20 ms) during the big PATCH, and
  with 1 and with ``--concurrent`` uploads at once of a 100 MiB clip (each sends all but its last
  byte, so no hand-off runs, then is terminated); target <= 64 MiB + one part per upload.

    python -m bench.gateway [--rounds 3] [--big-mib 1024] [--part 8388608] [--concurrency 4]
                            [--concurrent 16] [--rss-mib 100] [--no-tus-node]
                            [--parallel 4] [--concat-only]
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import psutil

from bench import _moto as moto
from tests.support.catalog_rows import catalog_row
from tests.support.gateway import GatewaySetup, auth

MIB = 2**20
BLOCK_BYTES = MIB  # the client's read size for the streamed PATCH body
SAMPLE_S = 0.02
STORED_TIMEOUT_S = 1800.0
REQUEST_TIMEOUT_S = 600.0
STORED = "stored"
SETTLED = {"stored", "failed", "cancelled", "expired"}
TUS_NODE = Path(__file__).resolve().parent / "tus_node"
TUS_NODE_PACKAGES = ("@tus/server", "@tus/s3-store")
TUS_NODE_START_TIMEOUT_S = 60.0
TUS_NODE_TOKEN = "unused"  # @tus/server checks no auth; the same headers are sent anyway


class RssSampler:
    """Peak RSS of one process while the ``with`` block runs (a daemon thread polling psutil)."""

    def __init__(self, pid: int) -> None:
        self.proc = psutil.Process(pid)
        self.before = self.peak = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _rss(self) -> float:
        return float(self.proc.memory_info().rss) / MIB

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_S):
            self.peak = max(self.peak, self._rss())

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.peak = max(self.peak, self._rss())

    @property
    def growth(self) -> float:
        return self.peak - self.before


def file_blocks(path: Path, start: int = 0, end: int | None = None) -> Iterator[bytes]:
    end = path.stat().st_size if end is None else end
    with path.open("rb") as f:
        f.seek(start)
        left = end - start
        while left > 0:
            block = f.read(min(BLOCK_BYTES, left))
            if not block:
                raise RuntimeError(f"{path} shrank while being sent")
            left -= len(block)
            yield block


def create(http: httpx.Client, uploads_url: str, token: str, path: Path) -> str:
    name = base64.b64encode(path.name.encode()).decode()
    reply = http.post(
        uploads_url,
        headers=auth(token)
        | {
            "Upload-Length": str(path.stat().st_size),
            "Upload-Metadata": f"filename {name},filetype dmlkZW8vbXA0",  # video/mp4
        },
    )
    if reply.status_code != 201:
        raise RuntimeError(f"creation answered {reply.status_code}: {reply.text}")
    return str(httpx.URL(uploads_url).join(reply.headers["Location"]))


def patch(
    http: httpx.Client, url: str, token: str, path: Path, start: int, end: int | None = None
) -> int:
    """One PATCH streaming bytes [start, end) of ``path``; returns the new offset."""
    end = path.stat().st_size if end is None else end
    reply = http.patch(
        url,
        content=file_blocks(path, start, end),
        headers=auth(token)
        | {
            "Content-Type": "application/offset+octet-stream",
            "Upload-Offset": str(start),
            "Content-Length": str(end - start),
        },
    )
    if reply.status_code != 204:
        raise RuntimeError(f"PATCH answered {reply.status_code}: {reply.text}")
    return int(reply.headers["Upload-Offset"])


def upload_row(setup: GatewaySetup, upload_id: str) -> dict[str, Any] | None:
    return catalog_row(setup.settings().resolved_database_url, "gateway_upload", "id", upload_id)


def video_key(setup: GatewaySetup, media_id: str) -> str:
    row = catalog_row(setup.settings().resolved_database_url, "media", "media_id", media_id)
    assert row is not None, media_id
    return str(row["video_key"])


def wait_settled(setup: GatewaySetup, url: str, timeout_s: float) -> dict[str, Any] | None:
    """The upload's row once it is stored (or failed); None if it never settles in time."""
    upload_id = url.rstrip("/").rsplit("/", 1)[-1]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        row = upload_row(setup, upload_id)
        if row is not None and row["state"] in SETTLED:
            return row
        time.sleep(0.1)
    return None


def empty_bucket(s3: Any, bucket: str) -> None:
    """Free moto's memory between rounds: objects and unfinished multipart uploads."""
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for obj in page.get("Contents", []):
            s3.delete_object(Bucket=bucket, Key=obj["Key"])
    for up in s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []):
        s3.abort_multipart_upload(Bucket=bucket, Key=up["Key"], UploadId=up["UploadId"])


def read_once_s(s3: Any, bucket: str, key: str) -> float:
    t0 = time.perf_counter()
    body = s3.get_object(Bucket=bucket, Key=key)["Body"]
    for _ in body.iter_chunks(8 * MIB):
        pass
    return time.perf_counter() - t0


class GatewayRun:
    """A fresh gateway (home, SQLite catalog, bucket) on the shared S3 server, warmed up."""

    def __init__(self, endpoint: str, bucket: str, part: int, warmup: Path, label: str) -> None:
        self.home = Path(tempfile.mkdtemp(prefix=f"reelflow-bench-gw-{label}-"))
        self.bucket = bucket
        self.setup = GatewaySetup(
            home=self.home,
            store_url=f"s3://{bucket}/gw",
            s3_endpoint_url=endpoint,
            extra_env={"REELFLOW_GATEWAY_PART_SIZE_BYTES": str(part)},
        )
        self.gw = self.setup.process(label)
        self.warmup = warmup
        self.token = ""
        self.http = httpx.Client(timeout=REQUEST_TIMEOUT_S)

    def __enter__(self) -> GatewayRun:
        self.gw.start()
        self.token = self.setup.token("bench")
        # Creation and PATCH paths warmed, then terminated: no hand-off, so no pipeline run
        # (each is a child process of its own, which no warm-up here could make warm).
        url = create(self.http, self.gw.uploads_url, self.token, self.warmup)
        patch(self.http, url, self.token, self.warmup, 0, self.warmup.stat().st_size - 1)
        self.http.delete(url, headers=auth(self.token))
        return self

    def step_timings(self, url: str) -> dict[str, float]:
        """The pipeline run's own step timings (its JSON summary in gateway-runs.log)."""
        upload_id = url.rstrip("/").rsplit("/", 1)[-1]
        log = self.home / "gateway-runs.log"
        for line in log.read_text(errors="replace").splitlines() if log.exists() else []:
            with contextlib.suppress(ValueError):
                summary = json.loads(line)
                if isinstance(summary, dict) and summary.get("upload") == upload_id:
                    return {k: float(v) for k, v in summary.get("timings_s", {}).items()}
        return {}

    def __exit__(self, *exc: object) -> None:
        self.http.close()
        self.gw.stop()


def gateway_round(run: GatewayRun, s3: Any, path: Path) -> dict[str, Any]:
    size = path.stat().st_size
    with RssSampler(run.gw.pid) as rss:
        t0 = time.perf_counter()
        url = create(run.http, run.gw.uploads_url, run.token, path)
        offset = patch(run.http, url, run.token, path, 0)
        upload_s = time.perf_counter() - t0
    assert offset == size, (offset, size)
    t1 = time.perf_counter()
    row = wait_settled(run.setup, url, STORED_TIMEOUT_S)
    stored_s = time.perf_counter() - t1 if row is not None and row["state"] == STORED else None
    read_s = None
    if stored_s is not None and row is not None:
        read_s = read_once_s(s3, run.bucket, "gw/" + video_key(run.setup, row["media_id"]))
    steps = run.step_timings(url)
    return {
        "upload_s": upload_s,
        "stored_s": stored_s,
        "steps_s": sum(steps.values()) if steps else None,
        "assemble_s": steps.get("assemble"),
        "read_s": read_s,
        "state": row["state"] if row else "timeout",
        "rss_growth_mib": rss.growth,
    }


def tus_node_missing() -> str | None:
    """Why the @tus/server contender cannot run here, or None if it can."""
    if shutil.which("node") is None:
        return "node is not on PATH"
    for package in TUS_NODE_PACKAGES:
        if not (TUS_NODE / "node_modules" / package / "package.json").exists():
            return f"{package} is not installed (cd bench/tus_node && npm ci)"
    return None


class TusNodeRun:
    """A fresh ``@tus/server`` + ``@tus/s3-store`` process (bench/tus_node/server.mjs) on
    127.0.0.1, staging into ``bucket`` of the shared S3 server, warmed up like the gateway."""

    def __init__(self, endpoint: str, bucket: str, part: int, warmup: Path) -> None:
        self.cmd = [
            "node", "--no-warnings", str(TUS_NODE / "server.mjs"),
            "--endpoint", endpoint, "--bucket", bucket, "--part-size", str(part), "--port", "0",
        ]  # fmt: skip
        self.bucket = bucket
        self.warmup = warmup
        self.uploads_url = ""
        self.proc: subprocess.Popen[str] | None = None
        self.http = httpx.Client(timeout=REQUEST_TIMEOUT_S)

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    def _wait_listening(self) -> str:
        assert self.proc is not None and self.proc.stdout is not None
        lines: list[str] = []
        # readline blocks: a reader thread bounds the wait for the server's one ready line.
        ready = threading.Event()

        def read() -> None:
            assert self.proc is not None and self.proc.stdout is not None
            for line in self.proc.stdout:
                lines.append(line)
                if "listening on http://" in line:
                    ready.set()
                    break

        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(TUS_NODE_START_TIMEOUT_S):
            self.proc.kill()
            raise RuntimeError(f"@tus/server did not start: {''.join(lines)[-2000:]}")
        line = lines[-1]
        return line[line.index("http://") :].split()[0]

    def __enter__(self) -> TusNodeRun:
        self.proc = subprocess.Popen(
            self.cmd, cwd=TUS_NODE, env=os.environ.copy(), stdout=subprocess.PIPE, text=True
        )
        self.uploads_url = self._wait_listening()
        url = create(self.http, self.uploads_url, TUS_NODE_TOKEN, self.warmup)
        patch(self.http, url, TUS_NODE_TOKEN, self.warmup, 0, self.warmup.stat().st_size - 1)
        self.http.delete(url, headers=auth(TUS_NODE_TOKEN))
        return self

    def __exit__(self, *exc: object) -> None:
        self.http.close()
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def tus_node_round(run: TusNodeRun, s3: Any, path: Path) -> dict[str, Any]:
    size = path.stat().st_size
    with RssSampler(run.pid) as rss:
        t0 = time.perf_counter()
        url = create(run.http, run.uploads_url, TUS_NODE_TOKEN, path)
        offset = patch(run.http, url, TUS_NODE_TOKEN, path, 0)
        upload_s = time.perf_counter() - t0
    assert offset == size, (offset, size)
    # Its 204 means the multipart upload is complete: the object is there, whole.
    key = url.rstrip("/").rsplit("/", 1)[-1]
    stored = s3.head_object(Bucket=run.bucket, Key=key)["ContentLength"]
    assert stored == size, (stored, size)
    return {"upload_s": upload_s, "rss_growth_mib": rss.growth}


def rss_with_concurrent(run: GatewayRun, path: Path, n: int) -> float:
    """RSS growth while ``n`` uploads of ``path`` stream at once (all but the last byte each,
    so no hand-off starts), then each is terminated."""
    size = path.stat().st_size
    with httpx.Client(timeout=REQUEST_TIMEOUT_S, limits=httpx.Limits(max_connections=2 * n)) as h:
        urls = [create(h, run.gw.uploads_url, run.token, path) for _ in range(n)]
        barrier = threading.Barrier(n)

        def send(url: str) -> int:
            barrier.wait(timeout=60)
            return patch(h, url, run.token, path, 0, size - 1)

        with RssSampler(run.gw.pid) as rss, ThreadPoolExecutor(n) as pool:
            offsets = list(pool.map(send, urls))
        assert offsets == [size - 1] * n, offsets
        for url in urls:
            h.delete(url, headers=auth(run.token))
    return rss.growth


def _old_final(writer: Any, final: Any, partials: list[Any]) -> Any:
    """What the final's assembly did before the store copied the parts (the baseline): each
    partial's object read back in 1 MiB blocks and written again through the PATCH writer."""

    def blocks() -> Iterator[bytes]:
        for p in partials:
            pos = 0
            while pos < p.length:
                block = writer.store.read_range(p.staging_key, pos, min(MIB, p.length - pos))
                pos += len(block)
                yield block

    return writer.append(final, blocks())


def concat_rounds(
    endpoint: str, path: Path, part: int, parallel: int, rounds: int
) -> dict[str, Any]:
    """parallelUploads' final assembly, in this process on the moto server: ``parallel``
    partials of ``path`` (cut as tus-js-client cuts them: equal slices, the last shorter) are
    written once by the PATCH writer; then, paired and alternating, the final is assembled by
    the store (``concat.assemble_final``: UploadPartCopy) and the old way (read back + write
    again), each final terminated after. Returns the median seconds of each, their ratio and
    the bytes each sent to S3 (moto's count)."""
    import secrets as _secrets
    from datetime import timedelta

    from deployments.gateway import concat
    from reelflow.logging import configure_logging
    from storage.catalog import Catalog, make_engine
    from storage.clock import utcnow
    from storage.gateway_uploads import GatewayUpload
    from storage.s3 import S3Store, make_s3_client
    from storage.tus_writer import TusWriter
    from tests.support.s3server import S3Control

    configure_logging(level=logging.WARNING)  # the writer's per-part lines are not figures
    control = S3Control(endpoint)
    s3 = moto.s3_client(endpoint)
    bucket = f"bench-concat-{int(time.time())}"
    s3.create_bucket(Bucket=bucket)
    home = Path(tempfile.mkdtemp(prefix="reelflow-bench-concat-"))
    store = S3Store(f"s3://{bucket}/gw", make_s3_client(endpoint_url=endpoint))
    writer = TusWriter(store, Catalog(make_engine(f"sqlite:///{home / 'c.db'}")), part_size=part)

    def row(length: int, kind: str) -> Any:
        return writer.create(
            GatewayUpload(
                id=_secrets.token_urlsafe(18),
                owner="bench",
                length=length,
                kind=kind,
                metadata_json=json.dumps({"filename": path.name, "filetype": "video/mp4"}),
                expires_at=utcnow() + timedelta(days=1),
            )
        )

    size = path.stat().st_size
    slice_bytes = -(-size // parallel)
    partials = []
    for start in range(0, size, slice_bytes):
        end = min(size, start + slice_bytes)
        partials.append(
            writer.append(row(end - start, "partial"), file_blocks(path, start, end)).row
        )
    for p in partials:
        concat.complete_partial(store, writer.catalog, p)

    def timed(how: str) -> tuple[float, int]:
        final = row(size, "final")
        before = control.bytes_in(bucket)
        t0 = time.perf_counter()
        if how == "copy":
            res = concat.assemble_final(writer, final, partials)
        else:
            res = _old_final(writer, final, partials)
        took = time.perf_counter() - t0
        after = control.bytes_in(bucket)
        assert res.completed, how
        writer.terminate(res.row)
        sent = sum(after.get(k, 0) - before.get(k, 0) for k in ("UploadPart", "PutObject"))
        return took, sent

    copy_runs: list[tuple[float, int]] = []
    old_runs: list[tuple[float, int]] = []
    try:
        for i in range(rounds):
            order = [("copy", copy_runs), ("read+write", old_runs)]
            for how, runs in order if i % 2 == 0 else order[::-1]:
                runs.append(timed(how))
            print(f"concat round {i}: copy {copy_runs[-1]}, read+write {old_runs[-1]}", flush=True)
    finally:
        empty_bucket(s3, bucket)
        shutil.rmtree(home, ignore_errors=True)
    copy_s = statistics.median(t for t, _ in copy_runs)
    old_s = statistics.median(t for t, _ in old_runs)
    return {
        "concat_input_mib": round(size / MIB),
        "concat_partials": parallel,
        "final_copy_s": copy_s,
        "final_read_write_s": old_s,
        "final_speedup": old_s / copy_s if copy_s else None,
        "final_copy_sent_mib": max(b for _, b in copy_runs) / MIB,
        "final_read_write_sent_mib": max(b for _, b in old_runs) / MIB,
    }


def median(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def fmt(value: object) -> str:
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def main() -> int:
    moto.use_moto_credentials()
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--big-mib", type=int, default=1024)
    p.add_argument("--part", type=int, default=8 * MIB)
    p.add_argument("--concurrency", type=int, default=4, help="boto3 upload_file threads")
    p.add_argument("--concurrent", type=int, default=16, help="uploads at once for RSS")
    p.add_argument("--rss-mib", type=int, default=100)
    p.add_argument("--no-tus-node", action="store_true", help="skip the @tus/server contender")
    p.add_argument("--parallel", type=int, default=4, help="partials of the concat figure")
    p.add_argument(
        "--concat-only", action="store_true", help="only the parallelUploads final figure"
    )
    args = p.parse_args()
    if args.concat_only:
        return concat_main(args)
    tus_node_why = "--no-tus-node" if args.no_tus_node else tus_node_missing()
    if tus_node_why:
        print(f"@tus/server contender skipped: {tus_node_why}", flush=True)
    big = moto.cached_clip(f"bench-{args.big_mib}mib.mp4", args.big_mib * MIB)
    small = moto.cached_clip(f"bench-{args.rss_mib}mib.mp4", args.rss_mib * MIB)
    warmup = moto.warmup_clip()
    server, endpoint = moto.start_s3()
    s3 = moto.s3_client(endpoint)
    stamp = int(time.time())
    base_runs: list[float] = []
    gw_runs: list[dict[str, Any]] = []
    node_runs: list[dict[str, Any]] = []
    try:
        # boto3's first transfer pays for its thread pool and connections: not measured.
        s3.create_bucket(Bucket=f"bench-gw-{stamp}-warm")
        moto.boto3_upload_s(s3, warmup, f"bench-gw-{stamp}-warm", args.part, args.concurrency)
        for i in range(args.rounds):
            bucket = f"bench-gw-{stamp}-{i}"
            s3.create_bucket(Bucket=bucket)

            def baseline(bucket: str = bucket) -> None:
                base_runs.append(moto.boto3_upload_s(s3, big, bucket, args.part, args.concurrency))
                empty_bucket(s3, bucket)

            def gateway(bucket: str = bucket, i: int = i) -> None:
                with GatewayRun(endpoint, bucket, args.part, warmup, f"r{i}") as run:
                    gw_runs.append(gateway_round(run, s3, big))
                empty_bucket(s3, bucket)

            def tus_node(bucket: str = bucket) -> None:
                with TusNodeRun(endpoint, bucket, args.part, warmup) as run:
                    node_runs.append(tus_node_round(run, s3, big))
                empty_bucket(s3, bucket)

            contenders: list[tuple[str, Callable[[], None]]] = [
                ("boto3", baseline),
                ("gateway", gateway),
            ]
            if not tus_node_why:
                contenders.append(("tus-node", tus_node))
            # Each round starts with another contender, so no one always goes first or last.
            shift = i % len(contenders)
            for _, run_it in contenders[shift:] + contenders[:shift]:
                run_it()
            node = f", @tus/server {node_runs[-1]}" if node_runs else ""
            print(f"round {i}: boto3 {base_runs[-1]:.2f}s, gateway {gw_runs[-1]}{node}", flush=True)
        concat_row = concat_rounds(endpoint, big, args.part, args.parallel, args.rounds)
        bucket = f"bench-gw-{stamp}-rss"
        s3.create_bucket(Bucket=bucket)
        with GatewayRun(endpoint, bucket, args.part, warmup, "rss") as run:
            rss_one = rss_with_concurrent(run, small, 1)
            rss_many = rss_with_concurrent(run, small, args.concurrent)
        empty_bucket(s3, bucket)
    finally:
        server.terminate()
        server.wait(timeout=30)
    size_mib = big.stat().st_size / MIB
    ratios = [b / g["upload_s"] for b, g in zip(base_runs, gw_runs, strict=True)]
    node_ratios = [n["upload_s"] / g["upload_s"] for n, g in zip(node_runs, gw_runs, strict=True)]
    stored = median([g["stored_s"] for g in gw_runs])
    steps = median([g["steps_s"] for g in gw_runs])
    assemble = median([g["assemble_s"] for g in gw_runs])
    read = median([g["read_s"] for g in gw_runs])
    row = {
        "input_mib": round(size_mib),
        "part_mib": args.part / MIB,
        "boto3_mib_s": size_mib / statistics.median(base_runs),
        "gateway_mib_s": size_mib / statistics.median(g["upload_s"] for g in gw_runs),
        "ratio_median_paired": statistics.median(ratios),
        "tus_node_mib_s": (
            size_mib / statistics.median(n["upload_s"] for n in node_runs) if node_runs else None
        ),
        "ratio_vs_tus_node_median_paired": (
            statistics.median(node_ratios) if node_ratios else None
        ),
        "last_byte_to_stored_s": stored,
        "pipeline_steps_s": steps,
        "assemble_s": assemble,
        "read_once_s": read,
        "stored_over_read": stored / read if stored and read else None,
        "assemble_over_read": assemble / read if assemble and read else None,
        "rss_growth_big_patch_mib": max(g["rss_growth_mib"] for g in gw_runs),
        "tus_node_rss_growth_big_patch_mib": (
            max(n["rss_growth_mib"] for n in node_runs) if node_runs else None
        ),
        "rss_growth_1_mib": rss_one,
        f"rss_growth_{args.concurrent}_mib": rss_many,
        "states": ",".join(g["state"] for g in gw_runs),
        **concat_row,
    }
    print(
        f"\nmoto S3 on 127.0.0.1, {args.rounds} paired rounds, part {args.part // MIB} MiB, "
        f"boto3 concurrency {args.concurrency}, RSS clip {args.rss_mib} MiB"
    )
    if node_runs:
        print(
            "@tus/server (@tus/s3-store, SHA-256 part checksums): its 204 comes after it has "
            "completed the multipart upload on the last PATCH; reelflow's 204 comes when the "
            "last part is durable and it completes later, in assemble (not in gateway_mib_s)"
        )
    else:
        print(f"@tus/server contender skipped: {tus_node_why}")
    print(" | ".join(row))
    print(" | ".join(fmt(v) for v in row.values()))
    print(json.dumps(row))
    return 0


def concat_main(args: argparse.Namespace) -> int:
    """``--concat-only``: the parallelUploads final figure alone (same file, part, server)."""
    big = moto.cached_clip(f"bench-{args.big_mib}mib.mp4", args.big_mib * MIB)
    server, endpoint = moto.start_s3()
    try:
        row = concat_rounds(endpoint, big, args.part, args.parallel, args.rounds)
    finally:
        server.terminate()
        server.wait(timeout=30)
    print(f"\nmoto S3 on 127.0.0.1, {args.rounds} paired rounds, part {args.part // MIB} MiB")
    print(" | ".join(row))
    print(" | ".join(fmt(v) for v in row.values()))
    print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
