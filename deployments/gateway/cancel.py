"""DELETE after the last byte: cancel the upload's run and discard its staged bytes, or 409.

An upload whose bytes are all in belongs to its ``ingest-video`` run. Until that run commits
to storing it, the creator can still take it back; after, the media stays (it is deleted as
media: ``reelflow media delete MEDIA_ID``).

The commit point is one compare-and-swap on the upload's row: the run sets ``sha256`` (the
assembled bytes' hash) on its ``processing`` row just before it makes the thumbnail and stores
(``flows/gateway_ingest.py``: the ``storing`` stage), and checks in the same CAS that the row
is still ``processing`` by it. The cancellation is the other CAS on the same row: ``received``
or ``processing`` without ``sha256`` → ``cancelled``. Row versions order the two, so exactly one
wins: either the run stores the media (the DELETE then answers 409), or the row is cancelled
and no run can store it any more (its CAS fails, it purges and stops). Either stored media
or nothing: never a half.

After the row is cancelled (a ``received`` one: no run has it, none can take it; purged at
once): the run is asked to stop (the hand-off's ``cancel``: Prefect's
``Cancelling`` state for a deployment run, SIGTERM for the embedded child), the run's lease
is awaited a bounded while (so its last store call is over), and every staged byte is
removed (:meth:`storage.tus_writer.TusWriter.purge`: multipart upload, assembled object,
tails, ledger parts). A run still alive after the wait finds the row cancelled at its next
step and purges again (idempotent).

Must not: delete anything of a stored media; log a token.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from typing import Any

from deployments.gateway.base import gateway_log
from reelflow import tus
from storage import gateway_progress as progress
from storage import gateway_uploads as uploads
from storage.gateway_sweep import upload_lease_name
from storage.gateway_uploads import GatewayUpload
from storage.leases import Fence, Leases

# How long a DELETE waits for the cancelled run to let go of the upload before it purges.
RUN_STOP_WAIT_S = 10.0
RUN_STOP_POLL_S = 0.2
CANCELLED_ERROR = "cancelled: by its creator (DELETE)"


def committed(row: GatewayUpload) -> bool:
    """The run has committed to storing the upload (see the module docstring)."""
    return row.sha256 is not None and row.state in (uploads.RECEIVED, uploads.PROCESSING)


def check_cancellable(row: GatewayUpload) -> None:
    """409 when the upload can no longer be cancelled: stored (or being stored), or failed."""
    if row.state == uploads.STORED and row.media_id:
        raise tus.TusError(
            409,
            f"upload {row.id} is stored as media {row.media_id}: the media stays; delete it "
            f"with `reelflow media delete {row.media_id}`",
            reason="upload_stored",
        )
    if row.state == uploads.STORED or committed(row):
        raise tus.TusError(
            409,
            f"upload {row.id} is being stored: the media stays; delete it with `reelflow media "
            f"delete MEDIA_ID` (its media_id: GET /uploads/{row.id}/status)",
            reason="upload_stored",
        )
    if row.state == uploads.FAILED:
        raise tus.TusError(
            409, f"upload {row.id} failed: nothing of it is left to cancel", reason="upload_failed"
        )


def cancel_run(gw: Any, row: GatewayUpload, fence: Fence) -> GatewayUpload | None:
    """Cancel ``row`` (``received``/``processing``, not committed) under the DELETE's hold
    ``fence``: the cancelled row, or None when another write came first (re-read, decide again)."""
    cancelled = uploads.cas_update(
        gw.engine, row.id, row.version, fence=fence, state=uploads.CANCELLED, error=CANCELLED_ERROR
    )
    if cancelled is None:
        return None
    with contextlib.suppress(Exception):
        progress.forget(gw.engine, row.id)
    if row.state == uploads.RECEIVED:
        # No run has taken it (a take moves it to processing first) and none can now.
        gw.writer.purge(cancelled, fence=fence)
        return cancelled
    stop = getattr(gw.handoff, "cancel", None)
    if callable(stop):
        try:
            stop(cancelled)
        # The run stops by itself at its next step (it finds the row cancelled).
        except Exception as exc:
            gateway_log().warning("upload_run_not_stopped", upload=row.id, error=str(exc)[:300])
    leases = Leases(gw.engine, ttl_s=gw.settings.lease_ttl_s)
    name = upload_lease_name(row.id, cancelled.store_url)
    holder = f"cancel:{gw.instance}:{uuid.uuid4().hex}"
    deadline = time.monotonic() + RUN_STOP_WAIT_S
    run_fence = leases.acquire(name, holder)
    while run_fence is None and time.monotonic() < deadline:
        time.sleep(RUN_STOP_POLL_S)
        run_fence = leases.acquire(name, holder)
    try:
        gw.writer.purge(cancelled, fence=fence)
    finally:
        if run_fence is not None:
            leases.release(name, holder, note="cancelled", token=run_fence.token)
    return cancelled
