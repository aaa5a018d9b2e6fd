"""How a received upload becomes its ``ingest-video`` run: the hand-offs and their sweeper.

* :class:`EventHandoff` (a Prefect server: ``PREFECT_API_URL`` set): posts the event
  ``reelflow.upload.received`` (resource ``reelflow.upload.<id>``) to ``POST /api/events``; the
  ``upload-received`` trigger of the ``ingest-video`` deployment (prefect.yaml) starts the run
  with ``upload`` from the event and ``origin: gateway``. The event id is deterministic (uuid5 of
  the upload id), so a hand-off repeated by another instance or the sweeper is dropped by the
  server as a duplicate; a run that died mid-way is resumed by an event whose id also names the
  dead run.
* :class:`SubprocessHandoff` (the embedded default, no server): runs ``reelflow ingest
  --upload=<id>`` as a child process in its own session, at most ``max_runs`` at once, one per
  upload; a reaper thread collects the children. A subprocess, not a thread of the gateway: the
  flow run brings Prefect's engine and, without a server, its own ephemeral API server, which in
  the gateway's process would share its lifetime (a gateway restart would kill the runs and lose
  their records), its memory (ffmpeg, ffprobe, the relay) and its failures; runs started from
  threads at once also race that server's start. The child survives the request and the gateway.
* ``cancel(row)`` (a DELETE after the last byte, :mod:`deployments.gateway.cancel`): the event
  hand-off sets the row's flow run to ``Cancelling`` through the Prefect API (its runner stops
  it); the embedded one sends SIGTERM to the child's process group, when this process started
  it (another instance's child finds the row cancelled at its next step).
* :func:`resume_stalled` / :class:`HandoffSweeper`: :class:`PipelineHandoff` (what
  ``default_handoff`` returns) runs it from the app's lifespan (``start()``/``close()``), at start
  and every ``every_s``: uploads ``received`` with no run for ``older_than_s`` (a crash between the last
  byte and the hand-off, a lost event, a run that gave up retryably), and ``processing`` by a run
  that died, are handed off again. Nothing is lost; the flow's compare-and-swap take under the
  upload's lease makes the work happen exactly once.

Must not: raise out of ``received`` for a failure the sweeper recovers from, or put a token, a
secret or a URL credential in an event (the event names the upload and its file, nothing else).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from reelflow.errors import ReelflowError
from reelflow.event_policy import GATEWAY_SOURCE_PREFIX, printable
from reelflow.logging import get_logger
from reelflow.settings import Settings
from storage.gateway_sweep import stalled_uploads
from storage.gateway_uploads import GatewayUpload
from storage.runtime import Runtime

EVENT_RECEIVED = "reelflow.upload.received"
RESOURCE_ID_PREFIX = "reelflow.upload."
MAX_EMBEDDED_RUNS = 2  # each child runs ffmpeg and, embedded, its own Prefect API server
REAP_EVERY_S = 1.0
SWEEP_EVERY_S = 60.0
STALLED_AFTER_S = 120.0  # longer than an embedded child takes to start and take its upload
MAX_NAME_CHARS = 120


def event_id(upload: str, after_run: str | None = None) -> uuid.UUID:
    """Same upload, same id (the server drops the repeats); a resumption after a dead run gets
    an id of its own, or the server would drop it as the first hand-off's duplicate."""
    name = f"reelflow-gateway:{upload}" + (f"#after:{after_run}" if after_run else "")
    return uuid.uuid5(uuid.NAMESPACE_URL, name)


def _filename(row: GatewayUpload) -> str:
    try:
        name = json.loads(row.metadata_json or "{}").get("filename")
    except ValueError:
        name = None
    return printable(str(name or row.id))[:MAX_NAME_CHARS]


def build_event(
    row: GatewayUpload, *, occurred: datetime, after_run: str | None = None
) -> dict[str, Any]:
    """The Prefect event for one received upload (JSON-ready; resource values are strings)."""
    return {
        "id": str(event_id(row.id, after_run)),
        "occurred": occurred.astimezone(UTC).isoformat(),
        "event": EVENT_RECEIVED,
        "resource": {
            "prefect.resource.id": f"{RESOURCE_ID_PREFIX}{row.id}",
            "prefect.resource.name": _filename(row),
        },
        "payload": {
            "upload": row.id,
            "source": f"{GATEWAY_SOURCE_PREFIX}{row.id}",
            "size": row.length,
            "after_run": after_run,
        },
    }


def _prefect_sink() -> Any:
    """A ``PrefectEventSink`` (a context manager with ``emit(events)``), loaded when used."""
    from deployments.s3_events.sinks import PrefectEventSink

    return PrefectEventSink()


class EventHandoff:
    """With a Prefect server: one event per hand-off, posted and acknowledged (or logged)."""

    def __init__(self, sink_factory: Callable[[], Any] = _prefect_sink) -> None:
        self._sink_factory = sink_factory

    def received(self, row: GatewayUpload) -> None:
        self._emit(row, None)

    def resume(self, row: GatewayUpload, after_run: str | None) -> None:
        self._emit(row, after_run)

    def cancel(self, row: GatewayUpload) -> None:
        """Ask Prefect to cancel the row's run (``Cancelling``: its runner kills it)."""
        run_id = _flow_run_uuid(row.flow_run_id)
        if run_id is None:
            return  # no run took it yet, or not a Prefect run
        from prefect.client.orchestration import get_client
        from prefect.states import Cancelling

        with get_client(sync_client=True) as client:
            client.set_flow_run_state(
                run_id, Cancelling(message="the upload was cancelled by its creator"), force=True
            )
        get_logger("reelflow.gateway", upload=row.id).info(
            "upload_run_cancelled", flow_run_id=str(run_id)
        )

    def _emit(self, row: GatewayUpload, after_run: str | None) -> None:
        log = get_logger("reelflow.gateway", upload=row.id)
        event = build_event(row, occurred=datetime.now(UTC), after_run=after_run)
        try:
            with self._sink_factory() as sink:
                sink.emit([event])
        except ReelflowError as exc:  # unreachable or refusing server: the sweeper tries again
            log.warning("upload_handoff_failed", via="event", error=str(exc)[:300])
            return
        log.info("upload_handed_off", via="event", event_id=event["id"], after_run=after_run)


def _flow_run_uuid(value: str | None) -> uuid.UUID | None:
    try:
        return uuid.UUID(value) if value else None
    except ValueError:
        return None


def ingest_command(upload: str) -> list[str]:
    """The child's argv. ``--upload=ID`` in one word: an id may begin with ``-``."""
    return [sys.executable, "-m", "reelflow.cli", "ingest", f"--upload={upload}", "--json"]


class SubprocessHandoff:
    """Embedded: each received upload's run in a ``reelflow ingest --upload`` child process."""

    def __init__(
        self,
        log_path: Path,
        *,
        max_runs: int = MAX_EMBEDDED_RUNS,
        command: Callable[[str], list[str]] = ingest_command,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.log_path = log_path
        self.max_runs = max_runs
        self._command = command
        self._env = dict(env) if env is not None else None
        self._children: dict[str, subprocess.Popen[bytes]] = {}
        self._lock = threading.Lock()
        self._reaper: threading.Thread | None = None
        self._stop = threading.Event()

    def received(self, row: GatewayUpload) -> None:
        self._start(row.id)

    def resume(self, row: GatewayUpload, after_run: str | None) -> None:
        self._start(row.id)

    def cancel(self, row: GatewayUpload) -> None:
        """SIGTERM the upload's child run (its whole process group), if this process runs it."""
        with self._lock:
            self._reap_locked()
            child = self._children.get(row.id)
        if child is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGTERM)  # start_new_session: its pid is its group's
        get_logger("reelflow.gateway", upload=row.id).info("upload_run_cancelled", pid=child.pid)

    def running(self) -> list[str]:
        with self._lock:
            self._reap_locked()
            return sorted(self._children)

    def _start(self, upload: str) -> None:
        log = get_logger("reelflow.gateway", upload=upload)
        with self._lock:
            self._reap_locked()
            if upload in self._children:
                return  # its run is starting or running already
            if len(self._children) >= self.max_runs:
                # The row stays received: the sweeper hands it off once a run has finished.
                log.info("upload_handoff_deferred", running=len(self._children))
                return
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            try:
                with self.log_path.open("ab") as out:
                    child = subprocess.Popen(
                        self._command(upload),
                        stdin=subprocess.DEVNULL,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        env=self._env,
                        start_new_session=True,  # the run outlives a gateway restart
                    )
            except OSError as exc:
                log.warning("upload_handoff_failed", via="subprocess", error=str(exc)[:300])
                return
            self._children[upload] = child
            if self._reaper is None or not self._reaper.is_alive():
                self._reaper = threading.Thread(
                    target=self._reap_loop, name="gateway-run-reaper", daemon=True
                )
                self._reaper.start()
        log.info("upload_handed_off", via="subprocess", pid=child.pid)

    def _reap_locked(self) -> None:
        for upload, child in list(self._children.items()):
            code = child.poll()
            if code is not None:
                del self._children[upload]
                get_logger("reelflow.gateway", upload=upload).info(
                    "upload_run_exited", pid=child.pid, exit_code=code
                )

    def _reap_loop(self) -> None:
        while not self._stop.wait(REAP_EVERY_S):
            with self._lock:
                self._reap_locked()
                if not self._children:
                    self._reaper = None
                    return

    def close(self) -> None:
        """Stop reaping. The children keep running: each finishes its upload's run."""
        self._stop.set()


class PipelineHandoff:
    """What ``reelflow gateway`` uses: a delivery (event or child run) and, between the app's
    ``start()`` and ``close()`` (its lifespan), the sweeper over the same delivery."""

    def __init__(
        self,
        settings: Settings,
        delivery: EventHandoff | SubprocessHandoff,
        *,
        every_s: float = SWEEP_EVERY_S,
        older_than_s: float = STALLED_AFTER_S,
    ) -> None:
        self.settings = settings
        self.delivery = delivery
        self.every_s = every_s
        self.older_than_s = older_than_s
        self._sweeper: HandoffSweeper | None = None

    def received(self, row: GatewayUpload) -> None:
        self.delivery.received(row)

    def resume(self, row: GatewayUpload, after_run: str | None) -> None:
        self.delivery.resume(row, after_run)

    def cancel(self, row: GatewayUpload) -> None:
        self.delivery.cancel(row)

    def start(self) -> None:
        """The sweeper: a first sweep at once (what a killed gateway left), then periodically."""
        rt = Runtime.from_settings(self.settings)
        self._sweeper = HandoffSweeper(
            rt, self.delivery, every_s=self.every_s, older_than_s=self.older_than_s
        ).start()

    def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.stop()
            self._sweeper.rt.catalog.engine.dispose()
            self._sweeper = None
        if isinstance(self.delivery, SubprocessHandoff):
            self.delivery.close()


def pipeline_handoff(settings: Settings) -> PipelineHandoff:
    """The hand-off for this process: an event with a Prefect server, else a child run."""
    from prefect.settings import PREFECT_API_URL  # loads prefect (a second): gateway start only

    if PREFECT_API_URL.value():
        return PipelineHandoff(settings, EventHandoff())
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    return PipelineHandoff(settings, SubprocessHandoff(settings.home / "gateway-runs.log", env=env))


# --- the sweeper -------------------------------------------------------------------------------


def resume_stalled(
    rt: Runtime, older_than_s: float, *, handoff: Any, now: datetime | None = None
) -> list[str]:
    """Hand off again every upload that waits for a run (see the module docstring); their ids."""
    done = []
    for stalled in stalled_uploads(rt.catalog.engine, older_than_s=older_than_s, now=now):
        resume = getattr(handoff, "resume", None)
        if stalled.after_run is not None and resume is not None:
            resume(stalled.row, stalled.after_run)
        else:
            handoff.received(stalled.row)
        done.append(stalled.row.id)
    if done:
        get_logger("reelflow.gateway").info("uploads_handed_off_again", uploads=done)
    return done


class HandoffSweeper:
    """``resume_stalled`` at start and every ``every_s`` from a daemon thread (start/stop)."""

    def __init__(
        self,
        rt: Runtime,
        handoff: Any,
        *,
        every_s: float = SWEEP_EVERY_S,
        older_than_s: float = STALLED_AFTER_S,
    ) -> None:
        self.rt = rt
        self.handoff = handoff
        self.every_s = every_s
        self.older_than_s = older_than_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> HandoffSweeper:
        self._thread = threading.Thread(target=self._loop, name="gateway-sweeper", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)

    def _loop(self) -> None:
        while True:
            try:
                resume_stalled(self.rt, self.older_than_s, handoff=self.handoff)
            # The sweeper must never die silently: a failed sweep is logged, the next one runs.
            except Exception as exc:
                get_logger("reelflow.gateway").warning("handoff_sweep_failed", error=str(exc)[:300])
            if self._stop.wait(self.every_s):
                return
