"""``reelflow s3-events``: run the S3 bucket-event bridge from SQS or as a webhook.

Wiring only: settings, clients and the Prefect sink are built here, once, and handed to the
:mod:`deployments.s3_events` package. Mounted by ``reelflow/cli.py`` as
``app.add_typer(events_app, name="s3-events")``; ``python -m deployments.events_cli`` runs it
alone.

Both commands need ``PREFECT_API_URL`` (the server whose ``ingest-video`` trigger turns the
events into runs) and S3 read access to the bucket (HEAD the video, GET its sidecar).
``REELFLOW_S3_ENDPOINT_URL`` points boto3 at an S3-compatible server, for S3 and for SQS.
``REELFLOW_EVENT_BUCKETS`` (required) lists the buckets or bucket/prefix folders whose objects
may become runs; ``REELFLOW_EVENT_ACCOUNTS`` the accounts their sidecars may name. The webhook
also needs ``REELFLOW_WEBHOOK_SECRET`` (at least 32 characters).
Exit codes: 0 done, 2 bad configuration or arguments, 1 anything else; errors are one line on
stderr. ``sqs`` prints one JSON summary line on stdout when it stops.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

import typer

from reelflow.cli_errors import fail
from reelflow.errors import ConfigurationError
from reelflow.event_policy import BUCKETS_ENV, EventPolicy
from reelflow.logging import configure_logging
from reelflow.settings import Settings

# Prefect reads these at import time, so they are set before anything imports prefect.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")

WEBHOOK_SECRET_ENV = "REELFLOW_WEBHOOK_SECRET"
# deployments.s3_events (boto3, httpx, starlette: about 0.3 s) and uvicorn are imported inside
# the commands: `reelflow` mounts this app at start, and `--help` or any other command must not
# wait for the bridge's clients.

events_app = typer.Typer(
    help="Bridge S3 bucket notifications into Prefect events (ingest-video triggers).",
    no_args_is_help=True,
)

_PREFIX_HELP = "Only keys starting with this prefix (case-sensitive)"
_SUFFIX_HELP = (
    "Video name suffix, case-insensitive; repeat for several (default: .mp4 .mov .webm .mkv)"
)


def _policy(settings: Any) -> Any:
    """The bucket/account policy; refused at start when it would let nothing through."""
    policy = EventPolicy.parse(settings.event_buckets, settings.event_accounts)
    if not policy.buckets:
        raise ConfigurationError(
            f"{BUCKETS_ENV} is not set: list the buckets (or bucket/prefix folders) whose "
            "objects may start ingest runs, e.g. raw-uploads/incoming"
        )
    return policy


def _key_filter(prefix: str, suffixes: list[str] | None) -> Any:
    from deployments.s3_events import DEFAULT_SUFFIXES, KeyFilter  # slow, see the note at the top

    return KeyFilter(prefix=prefix, suffixes=tuple(suffixes) if suffixes else DEFAULT_SUFFIXES)


def _bridge(settings: Settings, sink: Any, *, policy: Any, key_filter: Any) -> Any:
    """The bridge from notifications to ``sink``; reelflow's own store never triggers it."""
    from deployments.s3_events import Bridge, own_store_of  # slow, see the note at the top
    from storage.s3 import make_s3_client  # lazy: loads boto3 (~0.2 s)

    s3 = make_s3_client(
        endpoint_url=settings.s3_endpoint_url, max_attempts=settings.s3_max_attempts
    )
    return Bridge(
        s3=s3,
        sink=sink,
        key_filter=key_filter,
        policy=policy,
        own_store=own_store_of(settings.resolved_store_url),
    )


@contextlib.contextmanager
def _stop_on_sigterm() -> Iterator[threading.Event]:
    """SIGTERM (systemd, docker stop) sets the event; the previous handler comes back after."""
    stop = threading.Event()
    # The loop then ends after the current long poll, so no message is cut between emitting
    # its events and deleting it. Off the main thread signal() raises ValueError: no handler.
    try:
        previous = signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    except ValueError:
        yield stop
        return
    try:
        yield stop
    finally:
        signal.signal(signal.SIGTERM, previous)


@events_app.command("sqs")
def sqs(
    queue_url: str = typer.Option(
        ..., "--queue-url", help="SQS queue receiving the bucket's notifications"
    ),
    prefix: str = typer.Option("", "--prefix", help=_PREFIX_HELP),
    suffix: list[str] | None = typer.Option(None, "--suffix", help=_SUFFIX_HELP),
    max_messages: int | None = typer.Option(
        None, "--max-messages", min=1, help="Stop after receiving this many messages"
    ),
    once: bool = typer.Option(
        False, "--once", help="One receive (a long poll of up to 20 s), then stop"
    ),
) -> None:
    """Long-poll an SQS queue; delete each message once its events are in Prefect."""
    from deployments.s3_events import (  # slow, see the note at the top
        PrefectEventSink,
        make_sqs_client,
        poll_sqs,
    )

    configure_logging()
    try:
        settings = Settings()
        policy = _policy(settings)
        key_filter = _key_filter(prefix, suffix)
        # moto and LocalStack serve S3 and SQS on one endpoint; see the module docstring.
        queue = make_sqs_client(
            endpoint_url=settings.sqs_endpoint_url or settings.s3_endpoint_url,
            queue_url=queue_url,
            max_attempts=settings.s3_max_attempts,
        )
        with PrefectEventSink() as sink, _stop_on_sigterm() as stop:
            bridge = _bridge(settings, sink, policy=policy, key_filter=key_filter)
            stats = poll_sqs(
                bridge, queue, queue_url, max_messages=max_messages, once=once, stop=stop
            )
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    except Exception as exc:
        fail(exc)
        return
    typer.echo(json.dumps(vars(stats)))


@events_app.command("webhook")
def webhook(
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on"),
    port: int = typer.Option(8787, "--port", min=0, max=65535),
    prefix: str = typer.Option("", "--prefix", help=_PREFIX_HELP),
    suffix: list[str] | None = typer.Option(None, "--suffix", help=_SUFFIX_HELP),
) -> None:
    """Serve POST / for S3-format notification bodies (MinIO, Ceph); needs REELFLOW_WEBHOOK_SECRET."""
    from deployments.s3_events import (  # slow, see the note at the top
        PrefectEventSink,
        check_webhook_secret,
        make_webhook_app,
    )

    configure_logging()
    try:
        settings = Settings()
        secret = settings.webhook_secret.get_secret_value() if settings.webhook_secret else ""
        if not secret.strip():
            raise ConfigurationError(
                f"{WEBHOOK_SECRET_ENV} is not set: the webhook refuses unauthenticated senders"
            )
        check_webhook_secret(secret)
        policy = _policy(settings)
        key_filter = _key_filter(prefix, suffix)
        with PrefectEventSink() as sink:
            bridge = _bridge(settings, sink, policy=policy, key_filter=key_filter)
            app = make_webhook_app(bridge, secret=secret)
            import uvicorn  # slow, see the note at the top

            # uvicorn's own SIGINT/SIGTERM handling drains in-flight requests before exiting.
            uvicorn.run(app, host=host, port=port, log_level="warning")
    except Exception as exc:
        fail(exc)


if __name__ == "__main__":  # pragma: no cover - `python -m deployments.events_cli ...`
    sys.exit(events_app())
