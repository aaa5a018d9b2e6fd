"""``reelflow ingest`` with many sources: expand them, run them in this process, report them.

Expansion (the edges the pure rules in ``reelflow.batch`` leave out): a directory is walked
(videos only, hidden entries skipped, no symlinked directories), a glob is matched, an
``s3://bucket/prefix/`` is listed (ListObjectsV2, paginated). Each source then gets its own
``ingest-video`` run (the same flow, options and resume/de-duplication rules as one source: a
source stored already sends nothing), at most ``parallel`` at once on a thread pool, each in a
copy of the caller's context (Prefect's settings context included). The results come back in
the order the sources were given.

On a terminal, :class:`LiveBoard` shows each source's bytes, rate and ETA while its parts are
sent, then its stage (from the catalog's ``pipeline_stage`` rows of its flow run, so stages
written by any code path show). It draws on stderr; stdout keeps the table or the JSON.

Must not: print anything but through the caller (the board draws on stderr only), or decide an
outcome (``reelflow.batch`` does).
"""

from __future__ import annotations

import contextlib
import contextvars
import glob
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Column
from rich.text import Text

from reelflow.batch import (
    MAX_BATCH_SOURCES,
    REJECTED,
    Found,
    Result,
    is_pattern,
    is_s3_prefix,
    is_video_name,
    refused,
    succeeded,
    unique,
)
from reelflow.cli_errors import exit_code_for
from reelflow.credentials import public_url, sealed
from reelflow.errors import InputRejectedError
from reelflow.logging import redact_text
from reelflow.progress import progress_listener
from reelflow.settings import Settings

INTERRUPTED_EXIT = 130  # a second Ctrl-C: 128 + SIGINT, as a shell reports it
STAGE_POLL_S = 0.5  # the board's catalog poll for stage rows (one query for every active run)
STAGE_QUERY_ROWS = 500
NAME_CHARS = 32  # of a file's name on the board (the table shows the whole source)


# --- expansion ----------------------------------------------------------------------------------
def needs_batch(sources: Sequence[str]) -> bool:
    """More than one source, or one that stands for many (glob, directory, S3 prefix)."""
    if len(sources) != 1:
        return True
    arg = sources[0]
    if "://" in arg or arg.startswith("tus:"):
        return is_s3_prefix(arg)
    path = Path(arg).expanduser()
    return path.is_dir() or (is_pattern(arg) and not path.exists())


def expand(args: Sequence[str], settings: Settings) -> tuple[list[Found], list[Result]]:
    """What to ingest, and a rejected row for each argument that stood for nothing."""
    found: list[Found] = []
    empty: list[Result] = []
    for arg in args:
        items, missing = _expand_one(arg, settings)
        if missing is not None:
            empty.append(missing)
        found.extend(items)
        if len(found) > MAX_BATCH_SOURCES:
            raise InputRejectedError(
                f"more than {MAX_BATCH_SOURCES} sources in one batch; split it",
                reason="too_many_sources",
            )
    seen = unique(f.source for f in found)
    by_source = {f.source: f for f in reversed(found)}  # the first occurrence's size
    return [by_source[s] for s in seen], empty


def _expand_one(arg: str, settings: Settings) -> tuple[list[Found], Result | None]:
    if arg.startswith("s3://"):
        if is_s3_prefix(arg):
            return _list_s3(arg, settings)
        return [Found(arg)], None
    if "://" in arg or arg.startswith("tus:"):
        return [Found(arg)], None
    path = Path(arg).expanduser()
    if path.is_dir():
        items = _walk(path)
        return items, None if items else _nothing(arg, "no_videos", f"no videos in {arg}")
    if path.exists() or not is_pattern(arg):
        return [Found(arg, _size(path))], None  # validation says what is wrong with it
    items = []
    for match in sorted(glob.glob(os.path.expanduser(arg), recursive=True)):
        p = Path(match)
        items.extend(_walk(p) if p.is_dir() else [Found(match, _size(p))])
        if len(items) > MAX_BATCH_SOURCES:
            break
    return items, None if items else _nothing(arg, "no_match", f"nothing matches {arg}")


def _nothing(arg: str, reason: str, message: str) -> Result:
    return refused(public_url(arg), reason, message, terminal=True)


def local_size(arg: str) -> int | None:
    """A local file's size (the board's total), else None (URLs, S3 keys: known once validated)."""
    return None if "://" in arg or arg.startswith("tus:") else _size(Path(arg).expanduser())


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size if path.is_file() else None
    except OSError:
        return None


def _walk(root: Path) -> list[Found]:
    items: list[Found] = []
    for top, dirs, files in os.walk(root):  # symlinked directories are not followed
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if is_video_name(name):
                p = Path(top) / name
                items.append(Found(str(p), _size(p)))
                if len(items) > MAX_BATCH_SOURCES:
                    return items
    return items


def _list_s3(prefix_uri: str, settings: Settings) -> tuple[list[Found], Result | None]:
    from botocore.exceptions import BotoCoreError, ClientError

    from storage.s3 import make_s3_client  # lazy: boto3 (see reelflow.cli's imports)

    bucket, _, prefix = prefix_uri.removeprefix("s3://").partition("/")
    client = make_s3_client(
        endpoint_url=settings.s3_endpoint_url, max_attempts=settings.s3_max_attempts
    )
    items: list[Found] = []
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                key = str(obj["Key"])
                if is_video_name(key):
                    items.append(Found(f"s3://{bucket}/{key}", int(obj.get("Size", 0))))
            if len(items) > MAX_BATCH_SOURCES:
                break
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        if code in ("NoSuchBucket", "404") or status == 404:
            return [], _nothing(prefix_uri, "source_not_found", f"no such bucket: {bucket}")
        if status == 403:
            return [], _nothing(prefix_uri, "unreadable", f"access denied to {prefix_uri}")
        return [], refused(prefix_uri, "storage_error", f"cannot list {prefix_uri}: {code}",
                           terminal=False)  # fmt: skip
    except BotoCoreError as exc:
        message = f"cannot reach the source store: {exc}"
        return [], refused(prefix_uri, "storage_error", message, terminal=False)
    return items, None if items else _nothing(
        prefix_uri, "no_videos", f"no videos under {prefix_uri}"
    )


# --- running ------------------------------------------------------------------------------------
def result_for_error(source: str, exc: BaseException) -> Result:
    """A failed source's row: rejected when no re-run can help (exit 2), else failed."""
    reason = getattr(exc, "code", None) or getattr(exc, "reason", None) or type(exc).__name__
    message = " ".join(redact_text(str(exc).strip() or type(exc).__name__).split())
    return refused(source, str(reason), message, terminal=exit_code_for(exc) == 2)


def run_batch(
    found: Sequence[Found],
    options: dict[str, Any],
    *,
    parallel: int,
    board: LiveBoard | None = None,
) -> list[Result]:
    """One ``ingest-video`` run per source, ``parallel`` at once; results in ``found``'s order."""
    from flows.ingest import ingest_video  # lazy: loads prefect (see reelflow.cli's imports)

    if len(found) > 1 and parallel > 1:
        _prepare(Settings())

    def one(item: Found) -> Result:
        with sealed(item.source) as src:
            run_ids: list[str] = []
            hooks: list[Any] = [lambda flow, flow_run, state: run_ids.append(str(flow_run.id))]
            if board is not None:
                board.add(src.public, item.size_bytes)
                progress_listener.set(board.listener(src.public))
                hooks.append(board.on_running(src.public))
            flow: Any = ingest_video.with_options(on_running=hooks)
            try:
                summary = flow(source=src.public, source_secret=src.ref, **options)
            except Exception as exc:
                result = result_for_error(src.public, exc)
            else:
                result = succeeded(src.public, summary)
            result.flow_run_id = run_ids[0] if run_ids else None
            if board is not None:
                board.finish(src.public, result)
            return result

    ex = ThreadPoolExecutor(max_workers=max(1, parallel), thread_name_prefix="reelflow-batch")
    # Each run in its own copy of this context: Prefect's settings (API URL) come along.
    futures = [ex.submit(contextvars.copy_context().run, one, item) for item in found]
    try:
        wait(futures)
    except KeyboardInterrupt:
        # Ctrl-C: start nothing more, let the running ones end (their uploads stay resumable
        # either way); a second Ctrl-C leaves them, for the next run of the batch to resume.
        pending = sum(f.cancel() for f in futures)
        running = sum(not f.done() for f in futures)
        typer.echo(
            f"interrupted: {pending} not started; waiting for {running} running "
            "(Ctrl-C again to leave them; running the same batch again resumes them)",
            err=True,
        )
        try:
            wait(futures)
        except KeyboardInterrupt:
            os._exit(INTERRUPTED_EXIT)  # the worker threads would be joined at exit otherwise
    finally:
        ex.shutdown(wait=False, cancel_futures=True)
    return [
        refused(public_url(item.source), "interrupted", "not started: the batch was interrupted",
                terminal=False)
        if f.cancelled()
        else f.result()
        for item, f in zip(found, futures, strict=True)
    ]  # fmt: skip


def _prepare(settings: Settings) -> None:
    """What the first runs would otherwise race to make: the catalog's schema (SQLite has no
    lock around ``CREATE TABLE``: two threads on a new catalog both try) and the ephemeral
    Prefect API (started by the first client that finds none)."""
    from prefect.client.orchestration import get_client

    from storage.catalog import make_engine

    settings.home.mkdir(parents=True, exist_ok=True)
    make_engine(settings.resolved_database_url).dispose()
    with get_client(sync_client=True) as client:
        client.api_healthcheck()


def rejected_first(results: Sequence[Result]) -> list[Result]:
    return [r for r in results if r.outcome == REJECTED] + [
        r for r in results if r.outcome != REJECTED
    ]


# --- the live display ---------------------------------------------------------------------------
class _BytesColumn(ProgressColumn):
    """``12.0/48.0 MB`` when the source's size is known, else the percentage."""

    def render(self, task: Task) -> Text:
        if task.fields.get("sized"):
            from rich.filesize import decimal

            return Text(f"{decimal(int(task.completed))}/{decimal(int(task.total or 0))}")
        return Text(f"{task.percentage:.0f}%")


class _RateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        from rich.filesize import decimal

        if not task.fields.get("sized") or not task.speed or task.finished:
            return Text("")
        return Text(f"{decimal(int(task.speed))}/s")


class LiveBoard:
    """Per source: a bar with bytes, rate and ETA while its parts go out, then its stage."""

    def __init__(self, settings: Settings, *, console: Console | None = None) -> None:
        self.settings = settings
        self._engine: Any = None
        self.progress = Progress(
            TextColumn("{task.description}", style="bold"),
            BarColumn(bar_width=20),
            _BytesColumn(table_column=Column(no_wrap=True)),
            _RateColumn(table_column=Column(no_wrap=True)),
            TimeRemainingColumn(table_column=Column(no_wrap=True)),
            TextColumn("{task.fields[stage]}"),
            console=console or Console(stderr=True),
            transient=False,
        )
        self._tasks: dict[str, TaskID] = {}
        self._runs: dict[str, str] = {}  # flow run id → source
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="reelflow-board", daemon=True)

    def __enter__(self) -> LiveBoard:
        from storage.catalog import make_engine

        # Here, before any run: make_engine creates the schema, which a run would race on.
        self.settings.home.mkdir(parents=True, exist_ok=True)
        self._engine = make_engine(self.settings.resolved_database_url)
        self.progress.start()
        self._poller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._poller.join(5 * STAGE_POLL_S)
        self.progress.stop()
        self._engine.dispose()

    def add(self, source: str, size_bytes: int | None) -> None:
        name = source.rsplit("/", 1)[-1][:NAME_CHARS] or source
        with self._lock:
            self._tasks[source] = self.progress.add_task(
                name, total=size_bytes or 100, stage="validating", sized=bool(size_bytes)
            )

    def stage(self, source: str, stage: str) -> None:
        task = self._tasks.get(source)
        if task is not None:
            self.progress.update(task, stage=stage)

    def listener(self, source: str) -> Callable[[int, int], None]:
        """The run's part progress (done of total parts) as bytes of the source's size."""

        def report(done: int, total: int) -> None:
            task = self._tasks.get(source)
            if task is None:
                return
            size = self.progress.tasks[task].total or 100
            stage = "uploading" if done < total else "assembling"
            self.progress.update(task, completed=size * done / max(1, total), stage=stage)

        return report

    def on_running(self, source: str) -> Callable[..., None]:
        def hook(flow: Any, flow_run: Any, state: Any) -> None:
            with self._lock:
                self._runs[str(flow_run.id)] = source

        return hook

    def finish(self, source: str, result: Result) -> None:
        task = self._tasks.get(source)
        if task is None:
            return
        total = self.progress.tasks[task].total or 100
        label = result.outcome if result.ok else f"{result.outcome}: {result.reason}"
        done = total if result.ok else self.progress.tasks[task].completed
        self.progress.update(task, completed=done, stage=label)
        with self._lock:
            self._runs = {k: v for k, v in self._runs.items() if v != source}

    def _poll(self) -> None:
        """The newest ``pipeline_stage`` row of each active run, every STAGE_POLL_S."""
        last_id = 0
        while not self._stop.wait(STAGE_POLL_S):
            with self._lock:
                runs = dict(self._runs)
            if not runs:
                continue
            with contextlib.suppress(Exception):  # the display never fails a batch
                for row_id, flow_run_id, stage in _stage_rows(self._engine, list(runs), last_id):
                    last_id = max(last_id, row_id)
                    if flow_run_id in runs and runs[flow_run_id]:
                        self.stage(runs[flow_run_id], stage)


def _stage_rows(engine: Any, flow_run_ids: list[str], after_id: int) -> list[tuple[int, str, str]]:
    from sqlmodel import Session, col, select

    from storage.stages import PipelineStage

    stmt = (
        select(PipelineStage.id, PipelineStage.flow_run_id, PipelineStage.stage)
        .where(col(PipelineStage.flow_run_id).in_(flow_run_ids), col(PipelineStage.id) > after_id)
        .order_by(col(PipelineStage.id))
        .limit(STAGE_QUERY_ROWS)
    )
    with Session(engine) as s:
        return [(int(i or 0), str(f), str(st)) for i, f, st in s.exec(stmt).all()]


@contextlib.contextmanager
def live_board(settings: Settings, enabled: bool) -> Iterator[LiveBoard | None]:
    if not enabled:
        yield None
        return
    with LiveBoard(settings) as board:
        yield board
