"""``GET /uploads/{id}/events``: an upload's status as Server-Sent Events, until it ends.

The stream (``text/event-stream``), polled from the catalog so it shows what any gateway
instance received and any worker did:

* ``event: status`` with ``id: <pipeline_stage.id>`` for every stage row (a stage change),
  its data the status object as of that row (:func:`deployments.gateway.status.status_json`);
  first the current status (or, for a client reconnecting with ``Last-Event-ID: N`` or
  ``?last_event_id=N``, every stage row after ``N`` in order: no stage change is lost).
* ``event: progress`` (no ``id``: ``Last-Event-ID`` stays at the last stage) when the bytes
  received changed, at most every :data:`PROGRESS_EVERY_S` (4 a second).
* ``event: end`` with the final status (published, failed, cancelled, or stored when no
  publish follows), then the stream closes. A browser ``EventSource`` reconnects by itself
  after a close: a reconnect (``Last-Event-ID`` header) to an upload that has ended and has
  nothing newer is answered ``204 No Content``, which makes it stop (the SSE spec); clients
  should still ``close()`` on ``end``.
* ``: keep-alive`` every :data:`KEEPALIVE_S` of silence (proxies drop idle connections).
* ``event: timeout`` after ``REELFLOW_GATEWAY_EVENTS_MAX_S``; the client reconnects.

Polling costs two small queries per open stream per tick: every :data:`PROGRESS_EVERY_S`
while bytes arrive, every :data:`STAGE_POLL_S` after. The stream stops when the client goes
(Starlette cancels the generator on disconnect).

Must not: log the access token or the query; keep state another instance would need.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import anyio.to_thread
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from deployments.gateway.status_view import View, is_final, read_view, status_json
from reelflow import tus
from reelflow.settings import Settings
from storage import gateway_uploads as uploads
from storage.gateway_uploads import GatewayUpload

PROGRESS_EVERY_S = 0.25
STAGE_POLL_S = 1.0
KEEPALIVE_S = 15.0
RETRY_MS = 3000  # how long a browser waits before it reconnects
MAX_EVENT_ID = 2**63 - 1


def frame(event: str, data: dict[str, Any], *, event_id: int | None = None) -> bytes:
    """One SSE message (the data is one line of JSON: it never holds a newline)."""
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def last_event_id(request: Request) -> tuple[int | None, bool]:
    """The id the client has seen (header first, then ``?last_event_id=``) and whether it
    came from the header (an EventSource's own reconnect). A bad value: 400."""
    header = request.headers.get("last-event-id")
    raw = header if header is not None else request.query_params.get("last_event_id")
    if raw is None or raw.strip() == "":
        return None, False
    raw = raw.strip()
    if not raw.isdigit() or int(raw) > MAX_EVENT_ID:
        raise tus.TusError(400, "Last-Event-ID must be a stage event id", reason="bad_event_id")
    return int(raw), header is not None


class EventStream:
    """The events route over the status handlers (``deployments.gateway.status.StatusRoutes``:
    their auth, catalog and clock)."""

    def __init__(self, routes: Any, *, settings: Settings) -> None:
        self.routes = routes
        self.max_s = float(settings.gateway_events_max_s)

    def _view(self, upload_id: str, fallback: GatewayUpload) -> View:
        row = uploads.get(self.routes.engine, upload_id) or fallback
        return read_view(self.routes.engine, row, now=self.routes.gw.now())

    async def events(self, request: Request) -> Response:
        row, access = await anyio.to_thread.run_sync(self.routes.reader, request)
        seen, reconnect = last_event_id(request)
        view = await anyio.to_thread.run_sync(self._view, row.id, row)
        current = status_json(view, access=access)
        newest = current["event_id"]
        if reconnect and seen is not None and seen >= newest and is_final(current["stage"], view):
            return Response(status_code=204, headers={"Cache-Control": "no-store"})
        return StreamingResponse(
            self._stream(row, view, seen, access),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    async def _stream(
        self, row: GatewayUpload, view: View, seen: int | None, access: str | None
    ) -> AsyncIterator[bytes]:
        started = last_sent = time.monotonic()
        yield f"retry: {RETRY_MS}\n\n".encode()
        last: dict[str, Any] | None = None
        if seen is None:
            last = status_json(view, access=access)
            sent_id = int(last["event_id"])
            yield frame("status", last, event_id=sent_id or None)
        else:
            sent_id = seen
        while True:
            # Stage rows this client has not seen, oldest first, each as of itself.
            fresh = [s for s in view.stages if s.id is not None and s.id > sent_id]
            for stage_row in fresh:
                assert stage_row.id is not None
                if stage_row is fresh[-1]:
                    body = status_json(view, access=access)
                else:
                    upto = [s for s in view.stages if s.id is not None and s.id <= stage_row.id]
                    as_of = View(view.row, upto, publish=view.publish, replay=True)
                    body = status_json(as_of, access=access)
                sent_id = stage_row.id
                yield frame("status", body, event_id=sent_id)
                last, last_sent = body, time.monotonic()
            current = status_json(view, access=access)
            if last is None:  # a reconnect with nothing new: where the upload is now
                yield frame("progress", current)
                last_sent = time.monotonic()
            elif current["stage"] != last["stage"]:
                # A change with no stage row (an expiry): shown, but no id to resume from.
                yield frame("status", current)
                last_sent = time.monotonic()
            elif current["bytes_received"] != last["bytes_received"]:
                yield frame("progress", current)
                last_sent = time.monotonic()
            last = current
            if is_final(current["stage"], view):
                yield frame("end", current)
                return
            now = time.monotonic()
            if now - started >= self.max_s:
                yield frame("timeout", current)
                return
            if now - last_sent >= KEEPALIVE_S:
                yield b": keep-alive\n\n"
                last_sent = now
            tick = PROGRESS_EVERY_S if current["stage"] == "receiving" else STAGE_POLL_S
            await anyio.sleep(min(tick, max(0.0, self.max_s - (now - started))))
            view = await anyio.to_thread.run_sync(self._view, row.id, view.row)
