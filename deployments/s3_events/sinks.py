"""Where the bridge's events go: the :class:`EventSink` protocol and the Prefect API sink.

Owns: :class:`PrefectEventSink`, which posts a batch to ``POST /api/events`` and says, by
returning or raising :class:`EventDeliveryError`, whether the server took it.

Must not: build or filter events (the bridge does), swallow a failed post (the caller deletes
an SQS message or answers a webhook 200 only after ``emit`` returned), or start flow runs.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import httpx

from reelflow.errors import ConfigurationError, ReelflowError


class EventDeliveryError(ReelflowError):
    """The Prefect API did not accept the events; the notification must be delivered again."""

    retryable = True


class EventSink(Protocol):
    def emit(self, events: Sequence[Mapping[str, Any]]) -> None: ...


class PrefectEventSink:
    """Posts events to ``POST /api/events`` of ``PREFECT_API_URL`` (a context manager).

    Not ``emit_event``: that hands events to a background websocket worker which logs and drops
    failures, so the caller cannot know when to delete the SQS message. A 204 from this endpoint
    means the server took the batch; anything else raises :class:`EventDeliveryError`.
    """

    def __init__(self) -> None:
        self._client: Any = None
        self._lock = threading.Lock()  # one HTTP client, shared by the webhook's threads

    def __enter__(self) -> PrefectEventSink:
        # prefect takes about a second to import and reads its settings when imported: loaded
        # here, when a sink opens, so importing the bridge (and `reelflow --help`) does not pay.
        from prefect.client.orchestration import get_client
        from prefect.settings import PREFECT_API_URL

        if not PREFECT_API_URL.value():
            # Without it Prefect would start a private ephemeral server nobody's triggers watch.
            raise ConfigurationError(
                "PREFECT_API_URL is not set: point it at the server running reelflow's deployments"
            )
        client = get_client(sync_client=True)
        client.__enter__()
        problem = client.api_healthcheck()
        if problem is not None:
            client.__exit__(None, None, None)
            raise EventDeliveryError(f"Prefect API {PREFECT_API_URL.value()}: {problem}")
        self._client = client
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._client is not None:
            self._client.__exit__(*exc_info)
            self._client = None

    def emit(self, events: Sequence[Mapping[str, Any]]) -> None:
        from prefect.events import Event  # slow import, see __enter__ (already loaded by then)

        if self._client is None:
            raise RuntimeError("PrefectEventSink is used outside its with-block")
        # Validating with Prefect's own model catches a non-string resource value here, as a
        # bug in this module, instead of as a 422 from the server.
        body = [Event.model_validate(e).model_dump(mode="json") for e in events]
        try:
            with self._lock:
                self._client.request("POST", "/events", json=body)
        except httpx.HTTPError as exc:
            raise EventDeliveryError(f"Prefect API refused {len(body)} event(s): {exc}") from exc
