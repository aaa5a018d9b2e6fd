"""An upload's status object, built from the catalog: what ``/status``, the list and the event
stream answer (:mod:`deployments.gateway.status`, :mod:`deployments.gateway.events`).

The stage a creator sees (:func:`shown_stage`) is the newest stage row's, except that the row's
own state wins where it is the truth: bytes still arriving (``receiving``), a termination
(``cancelled``; ``failed`` when it was a refusal), an expiry (``failed``, ``upload_expired``);
``received`` shows as ``validating`` (the run is about to validate). :func:`status_json` and
:func:`shown_stage` are pure; :func:`read_view` reads ``gateway_upload``'s row, its
``pipeline_stage`` rows, its ``gateway_progress`` rate and the publish ledger.

Must not: write anything; answer for another creator's upload (the routes check ownership).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import quote

from storage import gateway_progress as progress
from storage import gateway_uploads as uploads
from storage import stages
from storage.clock import aware
from storage.gateway_uploads import GatewayUpload
from storage.publishing import get_publish, publishes_for
from storage.schedule import QUEUED, list_scheduled

# Stages after which nothing more happens to an upload (``stored`` only when no publish
# follows: :func:`is_final`).
FINAL_STAGES = (stages.PUBLISHED, stages.FAILED, stages.CANCELLED)
_AFTER_BYTES = (
    stages.VALIDATING,
    stages.SCANNING,
    stages.STORING,
    stages.STORED,
    stages.PUBLISHING,
    stages.PUBLISHED,
    stages.FAILED,
    stages.CANCELLED,
)


def shown_stage(state: str, last_stage: str | None) -> str:
    """The stage a creator sees for an upload in ``state`` whose newest stage row is
    ``last_stage`` (None: no row yet)."""
    if state == uploads.CANCELLED:  # terminated: by its creator, or refused (not a video)
        return stages.FAILED if last_stage == stages.FAILED else stages.CANCELLED
    if state == uploads.EXPIRED:
        return stages.FAILED
    if state == uploads.RECEIVING:
        return stages.RECEIVING
    if last_stage in _AFTER_BYTES:
        return last_stage
    if state == uploads.STORED:
        return stages.STORED
    if state == uploads.FAILED:
        return stages.FAILED
    return stages.VALIDATING  # received (or taken): the run validates first


def options_of(row: GatewayUpload) -> dict[str, Any]:
    try:
        loaded = json.loads(row.metadata_json or "{}")
    except ValueError:
        return {}
    return loaded if isinstance(loaded, dict) else {}


def expects_publish(row: GatewayUpload) -> bool:
    """Whether the upload's metadata asks for a TikTok post after it is stored."""
    meta = options_of(row)
    return bool(meta.get("account") or row.account) and meta.get("mode") != "none"


@dataclass(frozen=True)
class View:
    """What an upload's status is built from, read at one moment."""

    row: GatewayUpload
    stages: Sequence[stages.PipelineStage]  # oldest first
    rate_bytes_s: float | None = None
    publish: dict[str, Any] | None = None
    replay: bool = False  # the state as of the newest of ``stages`` (an SSE replay)


def is_final(stage: str, view: View) -> bool:
    """Nothing more will happen: published, failed, cancelled; or stored with no publish to
    come now (none asked, or one scheduled for later)."""
    if stage in FINAL_STAGES:
        return True
    if stage != stages.STORED:
        return False
    publish = view.publish
    return not expects_publish(view.row) or (
        publish is not None and publish["status"] == "SCHEDULED"
    )


def status_json(view: View, *, access: str | None = None) -> dict[str, Any]:
    """The status object of the contract (DESIGN, "Status JSON"). ``access``: the events token
    that authorized the request, carried by the thumbnail link so an ``<img>`` can load it."""
    row = view.row
    last = view.stages[-1] if view.stages else None
    stage = shown_stage(row.state, last.stage if last else None)
    if view.replay and last is not None:
        stage = stages.VALIDATING if last.stage == stages.RECEIVED else last.stage
    size = row.length
    received = row.offset
    percent = None
    if size:
        percent = round(min(100.0, 100.0 * received / size), 1)
    elif size == 0:
        percent = 100.0
    rate = view.rate_bytes_s if stage == stages.RECEIVING else None
    eta = None
    if rate and size is not None:
        eta = math.ceil(max(0, size - received) / rate)
    media_id = row.media_id or next((s.media_id for s in reversed(view.stages) if s.media_id), None)
    flow_run_id = row.flow_run_id or next(
        (s.flow_run_id for s in reversed(view.stages) if s.flow_run_id), None
    )
    failure = next((s for s in reversed(view.stages) if s.stage == stages.FAILED), None)
    reason = message = None
    if stage == stages.FAILED:
        if row.state == uploads.EXPIRED:
            reason, message = "upload_expired", "the upload expired before all its bytes arrived"
        elif failure is not None:
            reason, message = failure.reason, failure.message
        else:
            reason, message = _split_error(row.error)
    thumbnail_url = None
    if media_id:  # known once the media is stored (a publish may still fail after it)
        thumbnail_url = f"/uploads/{row.id}/thumbnail"
        if access:
            thumbnail_url += f"?access={quote(access)}"
    updated = aware(row.updated_at)
    if last is not None and aware(last.at) > updated:
        updated = aware(last.at)
    return {
        "id": row.id,
        "filename": options_of(row).get("filename"),
        "account": row.account,
        "stage": stage,
        "bytes_received": received,
        "size_bytes": size,
        "percent": percent,
        "rate_bytes_s": None if rate is None else round(rate, 1),
        "eta_s": eta,
        "flow_run_id": flow_run_id,
        "media_id": media_id,
        "thumbnail_url": thumbnail_url,
        "publish": view.publish,
        "reason": reason,
        "message": message,
        "created_at": aware(row.created_at).isoformat(),
        "updated_at": updated.isoformat(),
        "event_id": last.id if last is not None and last.id is not None else 0,
    }


def _split_error(error: str | None) -> tuple[str | None, str | None]:
    if not error:
        return None, None
    reason, sep, message = error.partition(": ")
    return (reason, message) if sep and " " not in reason else (None, error)


# --- reading the catalog -----------------------------------------------------------------------


def publish_of(engine: Any, row: GatewayUpload, rows: Sequence[stages.PipelineStage]) -> Any:
    """The upload's TikTok publish as ``{"publish_id", "status", "post_id", "fail_reason"}``,
    or None when none was asked or made yet. ``status`` is TikTok's (``PENDING`` before its
    init; ``SCHEDULED`` while queued for later)."""
    media_id = row.media_id or next((s.media_id for s in reversed(rows) if s.media_id), None)
    if not media_id:
        return None
    ledger = None
    for s in reversed(rows):
        publish_row = s.detail.get("publish_row")
        if publish_row:
            ledger = get_publish(engine, str(publish_row))
            break
    account = row.account or options_of(row).get("account")
    if ledger is None and account:
        found = publishes_for(engine, media_id, account)
        ledger = found[-1] if found else None
    if ledger is not None:
        return {
            "publish_id": ledger.publish_id,
            "status": ledger.tiktok_status or ledger.status.upper(),
            "post_id": ledger.post_id,
            "fail_reason": ledger.fail_reason,
        }
    if account:
        for queued in list_scheduled(engine, media_id):
            if queued.account == account and queued.status == QUEUED:
                return {
                    "publish_id": None,
                    "status": "SCHEDULED",
                    "post_id": None,
                    "fail_reason": None,
                    "publish_at": aware(queued.due_at).isoformat(),
                }
    return None


def read_view(engine: Any, row: GatewayUpload, *, now: datetime, upto: int | None = None) -> View:
    """The upload's status inputs now; ``upto``: only stage rows up to that id (a replay)."""
    rows: list[stages.PipelineStage] = stages.for_run(engine, row.id)
    if upto is not None:
        rows = [r for r in rows if r.id is not None and r.id <= upto]
    rate = None
    if row.state == uploads.RECEIVING:
        rate = progress.rate(engine, row.id, offset=row.offset, updated_at=row.updated_at, now=now)
    return View(row, rows, rate, publish_of(engine, row, rows))
