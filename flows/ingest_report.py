"""What both ingest flows (a source: flows/ingest.py; a gateway upload: flows/gateway_ingest.py)
build once their video is stored: the run's summary, its artifact, and the publish (now, or
queued for publish-due; a publish made now reports its stages to the ingest run's stage
log). Also the publish checks made before anything is sent.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from flows.chunk_pipeline import SendResult
from flows.publish import (
    check_creator_before_upload,
    check_duration_for_creator,
    publish_stored_media,
)
from flows.stage_log import StageLog, reporting_to
from reelflow.errors import InputRejectedError
from reelflow.logging import get_logger
from reelflow.publish_rules import PublishRequest
from reelflow.rules import VideoMeta
from storage.accounts import get_account
from storage.catalog import Media
from storage.runtime import Runtime
from storage.schedule import queue_publish
from tasks.scan import SCAN_OFF, ScanReport


def artifact_key(prefix: str, ident: str) -> str:
    return f"{prefix}-{ident}".lower().replace("_", "-")


@dataclass(frozen=True)
class Ingested:
    """What steps 1-5 produced: the stored media and what this run did for it (the summary and
    the publish are built from it once, at the end)."""

    media: Media
    chunks_total: int
    sent: SendResult | None = None  # None: found stored, nothing sent by this run
    scan: ScanReport | None = None  # None: found stored, not scanned again
    timings: dict[str, float] = field(default_factory=dict)


def summarize(done: Ingested, rt: Runtime) -> dict[str, Any]:
    """The flow's result: the stored media, its links, and what this run sent."""
    media, sent = done.media, done.sent
    # No report: this run found the video stored already and did not scan it again.
    scan = done.scan or (SCAN_OFF if not rt.settings.clamd_url else ScanReport("not_rescanned"))
    return {
        "media_id": media.media_id,
        "sha256": media.sha256,
        "size_bytes": media.size_bytes,
        "content_type": media.content_type,
        "container": media.container,
        "duration_s": media.duration_s,
        "width": media.width,
        "height": media.height,
        "fps": media.fps,
        "video_codec": media.video_codec,
        "bitrate": media.bitrate,
        "has_audio": media.has_audio,
        "audio_codec": media.audio_codec,
        "video_uri": rt.store.uri(media.video_key),
        "thumbnail_uri": rt.store.uri(media.thumbnail_key),
        "metadata_uri": rt.store.uri(media.metadata_key),
        "video_url": _link(rt, media.video_key),
        "thumbnail_url": _link(rt, media.thumbnail_key),
        "thumbnail_time_ms": media.thumbnail_time_ms,
        "chunks_total": done.chunks_total,
        "chunks_uploaded_this_run": sent.chunks_uploaded if sent else 0,
        "bytes_uploaded_this_run": sent.bytes_uploaded if sent else 0,
        "timings_s": {k: round(v, 3) for k, v in done.timings.items()},
        "scan": scan.verdict,
        "scan_engine": scan.engine,
    }


def _link(rt: Runtime, key: str) -> str:
    """A link a person can open: REELFLOW_PUBLIC_BASE_URL (CDN / public bucket) when set, else
    the store URI. Never a presigned URL: its signature and access key id would land in the
    flow result, the summary artifact and the CLI output."""
    base = rt.settings.public_base_url
    if base:
        return f"{base.rstrip('/')}/{key}"
    return rt.store.uri(key)


SUMMARY_FIELDS = (
    "media_id",
    "sha256",
    "size_bytes",
    "content_type",
    "duration_s",
    "width",
    "height",
    "fps",
    "video_codec",
    "bitrate",
    "has_audio",
    "video_uri",
    "thumbnail_uri",
    "metadata_uri",
    "chunks_total",
    "chunks_uploaded_this_run",
    "bytes_uploaded_this_run",
    "scan",
)


def summary_markdown(summary: dict[str, Any]) -> str:
    rows = "\n".join(f"| {k} | `{summary.get(k)}` |" for k in SUMMARY_FIELDS)
    parts = [f"# Ingested {summary['media_id']}\n"]
    thumb = summary.get("thumbnail_url", "")
    if thumb.startswith(("http://", "https://")):
        parts.append(f"[![thumbnail]({thumb})]({summary.get('video_url')})\n")
    parts.append(f"| field | value |\n|---|---|\n{rows}\n")
    publish = summary.get("publish")
    if publish:
        outcome = (
            f"post id `{publish.get('post_id')}`"
            if publish.get("post_id")
            else f"fail reason `{publish.get('fail_reason')}`"
            if publish.get("fail_reason")
            else "no public post id (TikTok gives one only for public, moderated posts)"
        )
        parts.append(
            f"\n## TikTok\n\npublish id `{publish.get('publish_id')}`, status "
            f"`{publish.get('status')}`, {outcome}, chunks sent this run "
            f"`{publish.get('chunks_sent_this_run')}` of `{publish.get('chunks_total')}`\n"
        )
    return "\n".join(parts)


def check_publish_request(rt: Runtime, request: PublishRequest) -> dict[str, Any]:
    """Refuse a publish TikTok would refuse before a single byte is uploaded: an unknown
    account, a privacy level the creator does not offer (creator_info, asked now). Returns the
    creator's limits for the duration check once the video is validated."""
    if get_account(rt.catalog.engine, request.account) is None:
        raise InputRejectedError(
            f"no TikTok account {request.account!r} (add it with `reelflow accounts add`)",
            reason="unknown_account",
        )
    return check_creator_before_upload(rt, request)


def duration_check(creator: dict[str, Any], account: str) -> Callable[[VideoMeta], None]:
    return lambda meta: check_duration_for_creator(creator, account, meta.duration_s)


def publish_or_queue(
    rt: Runtime,
    media: Media,
    request: PublishRequest,
    publish_at: datetime | None,
    *,
    log: StageLog | None = None,
) -> dict[str, Any]:
    """Publish now, or queue it for ``publish_at``. A publish made now reports its stages to
    ``log`` (the ingest run's stage log: flows/stage_log.py)."""
    if publish_at is not None and publish_at > datetime.now(UTC):
        row = queue_publish(
            rt.catalog.engine,
            media_id=media.media_id,
            account=request.account,
            mode=request.mode,
            privacy=request.privacy,
            caption=request.caption,
            due_at=publish_at,
            again=request.again,
            post=request.post,
        )
        get_logger(media_id=media.media_id).info("publish_scheduled", due_at=str(publish_at))
        done = json.loads(row.result_json) if row.result_json else {}
        return {
            "publish_id": done.get("publish_id"),
            # queued (or already taken / done by publish-due, when it was queued before)
            "status": "SCHEDULED" if row.status == "queued" else done.get("status", row.status),
            "post_id": None,
            "publish_at": row.due_at.isoformat(),
            "chunks_total": None,
            "chunks_sent_this_run": 0,
        }
    with reporting_to(log):
        return publish_stored_media(rt, media.media_id, request)
