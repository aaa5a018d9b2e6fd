"""Progress artifacts posted from a background thread, so the data path never waits for them.

Each Prefect artifact update is an API round trip (20-35 ms measured on a local server). Called
inline, every update held back the thread that feeds the chunks, and the last one (100 %) was
paid inside the upload phase. :class:`ProgressReporter` keeps only the newest value, posts it at
most once per interval, and :meth:`ProgressReporter.close` posts the final value before the flow
moves on to its summary. Progress is best effort: a failed post is logged, never raised.

:data:`progress_listener` is the in-process subscriber of whoever called the flow in this
context (the CLI's live display): each report reaches it at once, unthrottled, from the thread
that reported; a listener that raises is ignored.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
import time
from collections.abc import Callable
from typing import Any
from uuid import UUID

from reelflow.logging import get_logger

CLOSE_TIMEOUT_S = 30.0

# (done, total) of the run started in this context; set by the caller of the flow, read once
# when a ProgressReporter is made.
progress_listener: contextvars.ContextVar[Callable[[int, int], None] | None] = (
    contextvars.ContextVar("reelflow_progress_listener", default=None)
)


class ProgressReporter:
    """Posts the latest percentage of one progress artifact, at most once per ``every_s``."""

    def __init__(self, artifact_id: UUID | Any, *, every_s: float) -> None:
        self._artifact_id = artifact_id
        self._every_s = every_s
        self._cond = threading.Condition()
        self._pending: float | None = None
        self._closed = False
        self.posted: list[float] = []  # what reached the API, in order (for tests and logs)
        self._listener = progress_listener.get()
        # The Prefect settings and run context of the caller, for the client the update opens.
        context = contextvars.copy_context()
        self._thread = threading.Thread(
            target=context.run, args=(self._loop,), name="reelflow-progress", daemon=True
        )
        self._thread.start()

    def report(self, done: int, total: int) -> None:
        """Record ``done`` of ``total``; returns at once (the newest value replaces older ones)."""
        with self._cond:
            self._pending = 100.0 * done / max(1, total)
            self._cond.notify()
        if self._listener is not None:
            with contextlib.suppress(Exception):  # a display never fails an upload
                self._listener(done, total)

    def close(self) -> None:
        """Post what is still pending, then stop the thread."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(CLOSE_TIMEOUT_S)

    def __enter__(self) -> ProgressReporter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _loop(self) -> None:
        last_post = float("-inf")
        while True:
            with self._cond:
                while self._pending is None and not self._closed:
                    self._cond.wait()
                if self._pending is None:
                    return  # closed, nothing left to post
                # Throttle, but a close posts the final value without waiting out the interval.
                while not self._closed:
                    remaining = last_post + self._every_s - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
                value, self._pending = self._pending, None
            self._post(value)
            last_post = time.monotonic()

    def _post(self, value: float) -> None:
        # Lazy: prefect takes ~1.5 s to import, and the CLI imports this module for its listener.
        from prefect.artifacts import update_progress_artifact

        try:
            update_progress_artifact(artifact_id=self._artifact_id, progress=value)
        except Exception as exc:  # progress is cosmetic: never fail an upload over it
            get_logger().warning("progress_update_failed", error=type(exc).__name__)
            return
        self.posted.append(value)
