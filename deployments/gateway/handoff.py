"""The gateway's hand-off: what happens once every byte of an upload is durably stored.

The HTTP side (:mod:`deployments.gateway.app`) calls ``handoff.received(row)`` exactly when a
request moved an upload (a single upload or a concatenation's final one, never a partial) to
state ``received``. It is called from the request's worker thread after the upload's hold is
released, and must return quickly (emit an event, or start the run elsewhere): the client waits
for it. It must not raise for a failure the pipeline can recover from: the row stays
``received`` and a sweeper hands it off again, so a lost call loses nothing.

This module owns the interface and the default; the pipeline's implementation (a Prefect event
with a Prefect server, the flow run itself on the embedded default) replaces
:class:`LoggingHandoff` here.
"""

from __future__ import annotations

from typing import Any, Protocol

from reelflow.logging import get_logger


class Handoff(Protocol):
    """What the app calls. A hand-off may also define ``start()`` and ``close()`` (no
    arguments): the app's lifespan calls them in a worker thread when the server starts and
    after it drained its requests (a sweeper's thread, child processes to reap)."""

    def received(self, row: Any) -> None:
        """``row`` (a ``storage.gateway_uploads.GatewayUpload``) holds all its bytes."""
        ...


class LoggingHandoff:
    """The default until the pipeline's hand-off is wired: it only records the fact."""

    def received(self, row: Any) -> None:
        get_logger("reelflow.gateway").info(
            "upload_received",
            upload=row.id,
            owner=row.owner,
            size_bytes=row.length,
        )


def default_handoff(settings: Any) -> Handoff:
    """The hand-off ``reelflow gateway`` uses for ``settings``: a Prefect event with a Prefect
    server, else the run in a child process (:mod:`deployments.gateway.pipeline`, which also has
    the sweeper the gateway runs at start and periodically: ``HandoffSweeper``)."""
    from deployments.gateway.pipeline import pipeline_handoff  # loads prefect's settings

    return pipeline_handoff(settings)
