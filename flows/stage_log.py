"""What a flow run tells the stage log (:mod:`storage.stages`): one row per stage it enters.

Every ingest path writes the same stages, so the status API, ``/metrics`` and the daily
report count every worker's work:

* a gateway upload (flows/gateway_ingest.py): ``validating`` (assemble + verify), ``scanning``,
  ``storing`` (thumbnail + store), ``stored`` | ``failed``; ``run_key`` = the upload's id (the
  gateway wrote ``receiving``/``received``);
* a source (flows/ingest.py: CLI, UI, S3 events, URLs): ``receiving`` (the chunk upload
  starts), ``received`` (assembled: the last byte is in the store), ``validating`` (the
  assembled object checked), ``scanning``, ``storing``, ``stored`` | ``failed``; ``run_key`` =
  the ingest's upload-session id (one per source × store × chunk size; a re-run of the same
  source adds rows under the same key). A run that finds its video stored already writes one
  ``stored`` row (``deduplicated`` in the detail).
* a publish (flows/publish_run.py): ``publishing`` when a publish run starts, ``published`` when
  the ledger reaches PUBLISH_COMPLETE (or SEND_TO_USER_INBOX, ``status`` in the detail),
  ``failed`` when it fails; every publish row carries ``publish_row`` (the ledger row id: count
  publishes by it) in the detail. Under an ingest run they go to that run's key
  (:data:`current`); a publish on its own (publish-media, publish-due, reconcile) to the runs
  that stored the media (``run_keys_for_media``), or ``publish:<ledger row id>`` if none did.

``failed`` rows carry the typed error's ``reason`` and a one-line redacted ``message``. A
stage write never fails the run: it is logged and the work goes on (the status falls back on
the upload's row).

Must not: decide anything about a run's work.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

from prefect.runtime import deployment as current_deployment
from prefect.runtime import flow_run as current_flow_run

from reelflow.logging import get_logger, redact_text
from storage import stages

MAX_MESSAGE_CHARS = 300


def flow_run_id() -> str | None:
    run_id = current_flow_run.get_id()
    return str(run_id) if run_id else None


def origin_of(origin: str | None) -> str:
    """``origin`` as given (``s3-event``, ``gateway``), else ``cli`` for a run the CLI started
    in-process, ``deployment`` for one started through a deployment (UI, API, schedule)."""
    if origin:
        return origin
    return "deployment" if current_deployment.get_id() else "cli"


def failure_fields(exc: BaseException) -> dict[str, Any]:
    reason = getattr(exc, "reason", None) or getattr(exc, "code", None) or type(exc).__name__
    message = redact_text(" ".join(str(exc).split()))[:MAX_MESSAGE_CHARS]
    return {"reason": str(reason), "message": message}


@dataclass(frozen=True)
class StageLog:
    """The rows of one run key, with what every row of it repeats."""

    engine: Any
    run_key: str
    upload_id: str | None = None
    origin: str | None = None
    owner: str | None = None
    account: str | None = None
    size_bytes: int | None = None
    media_id: str | None = None

    def with_(self, **fields: Any) -> StageLog:
        return replace(self, **fields)

    def __call__(self, stage: str, **fields: Any) -> None:
        row = {
            "upload_id": self.upload_id,
            "origin": self.origin,
            "owner": self.owner,
            "account": self.account,
            "size_bytes": self.size_bytes,
            "media_id": self.media_id,
            "flow_run_id": flow_run_id(),
        } | fields
        try:
            stages.record(self.engine, self.run_key, stage, **row)
        # The work goes on; only what a creator sees of it is missing a step.
        except Exception as exc:
            get_logger(run_key=self.run_key).warning(
                "stage_not_recorded", stage=stage, error=type(exc).__name__
            )

    def failed(self, exc: BaseException, **fields: Any) -> None:
        self(stages.FAILED, **(failure_fields(exc) | fields))


# The stage log of the ingest run in progress in this context: a publish it starts reports there.
current: contextvars.ContextVar[StageLog | None] = contextvars.ContextVar(
    "reelflow_stage_log", default=None
)


@contextlib.contextmanager
def reporting_to(log: StageLog | None) -> Iterator[None]:
    token = current.set(log)
    try:
        yield
    finally:
        current.reset(token)


def publish_logs(engine: Any, media_id: str, publish_row: str, account: str) -> list[StageLog]:
    """Where a publish's stages go (see the module docstring)."""
    log = current.get()
    if log is not None:
        return [log.with_(media_id=media_id, account=account)]
    try:
        keys = stages.run_keys_for_media(engine, media_id)
    except Exception:  # only the creator's view of the publish depends on it
        keys = []
    keys = keys or [f"publish:{publish_row}"]
    return [
        StageLog(engine, key, media_id=media_id, account=account, origin="publish") for key in keys
    ]
