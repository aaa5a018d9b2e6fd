"""`reelflow gateway`: the upload gateway's app served by uvicorn, until SIGINT/SIGTERM.

Refuses to start without a signing secret of at least 32 bytes (one line, exit 2). On
SIGINT/SIGTERM uvicorn stops accepting connections and gives in-flight requests
:data:`SHUTDOWN_GRACE_S` to finish; a PATCH cut by the deadline keeps every byte it made durable
(its body simply ends there), so the client resumes from HEAD.

Several gateways may serve the same catalog (PostgreSQL) and store: no state lives in the
process but the clients it was built with.
"""

from __future__ import annotations

from typing import Any

from deployments.gateway.auth import gateway_secret
from reelflow.logging import configure_logging, get_logger, remember_settings_secrets
from reelflow.settings import Settings

SHUTDOWN_GRACE_S = 30
# Idle keep-alive connections are closed after this (uvicorn's default of 5 s makes tus
# clients, which pause between chunks to hash the next one, reconnect for every PATCH).
KEEP_ALIVE_S = 30


def serve_gateway(
    settings: Settings, *, host: str = "127.0.0.1", port: int = 8080, handoff: Any = None
) -> None:
    """Serve the gateway on ``host:port`` until interrupted (blocking)."""
    # First: every secret the settings hold (the signing secret included) is masked in any log
    # line or error from here on, the refusal below included.
    remember_settings_secrets(settings)
    gateway_secret(settings)  # refuse before anything (the catalog, the store) is opened
    import uvicorn  # lazy: `reelflow --help` must not wait for it

    from deployments.gateway.app import build_app

    configure_logging()
    app = build_app(settings, handoff=handoff)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        access_log=False,  # its lines carry the upload URLs; the app logs its own events
        timeout_graceful_shutdown=SHUTDOWN_GRACE_S,
        timeout_keep_alive=KEEP_ALIVE_S,
        lifespan="on",
    )
    server = uvicorn.Server(config)
    get_logger("reelflow.gateway").info("gateway_started", host=host, port=port)
    # uvicorn's own SIGINT/SIGTERM handling drains in-flight requests, then re-raises the
    # signal: the process ends the way it was asked to (exit status 128 + signal).
    server.run()
