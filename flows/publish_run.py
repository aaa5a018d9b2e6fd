"""One publish run's bookkeeping and report: timings, counters, the progress artifact, the
summary the ``publish-media`` flow returns and shows as a markdown artifact, and its stage
rows (``publishing`` when it starts; ``published`` or ``failed`` when it ends there:
flows/stage_log.py says where they go).

Must not: call TikTok or write the ledger (the run's tasks and :mod:`storage.publishing` do).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from prefect.artifacts import create_progress_artifact

from flows.stage_log import StageLog, failure_fields, publish_logs
from reelflow.errors import ReelflowError
from reelflow.progress import ProgressReporter
from reelflow.publish_rules import DONE_STATES, FAILED
from storage import stages
from storage.catalog import Media
from storage.publishing import Publish
from tasks.publish_context import PublishContext
from tasks.tiktok_chunks import Tally
from tasks.tiktok_publish import UploadSession

PROGRESS_INTERVAL_S = 2.0


def artifact_key(prefix: str, row_id: str) -> str:
    return f"{prefix}-{row_id}".lower().replace("_", "-")


class PublishRun:
    """One run's bookkeeping: timings, counters and the progress artifact."""

    def __init__(self, ctx: PublishContext, row: Publish, media: Media) -> None:
        self.ctx, self.row_id, self.media, self.video_size = ctx, row.id, media, row.video_size
        self.tally = Tally()
        self.timings: dict[str, float] = {}
        self.progress: ProgressReporter | None = None
        self.chunks_total = row.chunks_total
        self.session: UploadSession | None = None  # the session this run sends to
        self.stage_logs: list[StageLog] = publish_logs(
            ctx.rt.catalog.engine, media.media_id, row.id, row.account
        )
        # A publish that had ended before this run (a re-run finding it) is not reported again.
        self.settled_before = row.status in DONE_STATES or row.status == FAILED
        if not self.settled_before:
            self._stage(stages.PUBLISHING, row)
        size = max(1, media.size_bytes)
        self.progress_id = create_progress_artifact(
            progress=100.0 * row.bytes_acknowledged / size,
            key=artifact_key("tiktok-upload", row.id),
            description=f"TikTok upload of {media.media_id} to {row.account}",
        )

    def _stage(self, stage: str, row: Publish, **fields: Any) -> None:
        detail = {"publish_row": row.id, "publish_id": row.publish_id, "mode": row.mode}
        for log in self.stage_logs:
            log(stage, **(detail | fields))

    def report(self, final: Publish, error: ReelflowError | None) -> None:
        """The run's outcome as a stage: ``published`` once TikTok completed the post (or put
        it in the inbox), ``failed`` when TikTok failed it or a terminal error stopped it;
        nothing while it is still in flight (a poll deadline, a retryable error), nor for a
        publish that had ended before this run."""
        if self.settled_before:
            return
        if final.status in DONE_STATES:
            self._stage(
                stages.PUBLISHED,
                final,
                status=final.tiktok_status,
                post_id=final.post_id,
                size_bytes=final.video_size,
            )
        elif final.status == FAILED:
            self._stage(
                stages.FAILED,
                final,
                reason=final.fail_reason or final.error_code or "publish_failed",
                message=failure_fields(error)["message"] if error else final.fail_reason or "",
                step="publish",
            )
        elif error is not None and not error.retryable:
            self._stage(stages.FAILED, final, step="publish", **failure_fields(error))

    def on_progress(self, done: int, total: int) -> None:
        # Each update is an API call (~20 ms measured): posted from a thread of its own, at most
        # one per interval, so the chunk loop never waits for one; the last is posted on close.
        if self.progress is None:
            self.progress = ProgressReporter(self.progress_id, every_s=PROGRESS_INTERVAL_S)
        self.progress.report(done, total)

    def close_progress(self) -> None:
        if self.progress is not None:
            self.progress.close()

    @contextmanager
    def timed(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - t0


def run_summary(run: PublishRun, row: Publish) -> dict[str, Any]:
    return {
        "publish_id": row.publish_id,
        "status": row.tiktok_status,
        "post_id": row.post_id,
        "fail_reason": row.fail_reason,
        "chunks_total": row.chunks_total or run.chunks_total,
        "chunks_sent_this_run": run.tally.chunks,
        "bytes_sent_this_run": run.tally.bytes,
        "ledger_status": row.status,
        "inits": row.inits,
        "account": row.account,
        "media_id": row.media_id,
        "mode": row.mode,
        "generation": row.generation,
        "timings_s": {k: round(v, 3) for k, v in run.timings.items()},
    }


def summary_markdown(summary: dict[str, Any], error: ReelflowError | None) -> str:
    lines = [
        f"# TikTok publish of {summary['media_id']} to {summary['account']}",
        "",
        "| field | value |",
        "|---|---|",
    ]
    shown = ("publish_id", "status", "ledger_status", "post_id", "fail_reason", "inits", "mode")
    lines += [f"| {k} | `{summary.get(k)}` |" for k in shown]
    lines.append(f"| chunks | {summary['chunks_sent_this_run']} sent / {summary['chunks_total']} |")
    if error is not None:
        code = getattr(error, "code", None) or getattr(error, "reason", None)
        lines.append(f"| error | `{code}`: {error} |")
        lines.append(f"| log_id | `{getattr(error, 'log_id', None)}` |")
    return "\n".join(lines) + "\n"
