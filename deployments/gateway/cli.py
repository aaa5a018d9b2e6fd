"""``reelflow gateway``: serve the tus upload gateway, and mint creators' bearer tokens.

Mounted by ``reelflow/cli.py`` as ``app.add_typer(gateway_app, name="gateway")``:

    reelflow gateway [--host 127.0.0.1] [--port 8080]
    reelflow gateway token SUBJECT [--account NAME]... [--ttl SECONDS] [--max-size BYTES]

``token`` prints one line, the JWT, and nothing else (scripts read it). Both need
``REELFLOW_GATEWAY_SECRET`` (at least 32 bytes). Exit codes: 0, 2 bad settings or arguments,
1 anything else; errors are one line on stderr.

Only typer is imported at module level: ``reelflow`` mounts this app at start, and ``--help``
must not wait for uvicorn, Starlette or SQLAlchemy.
"""

from __future__ import annotations

import typer

from reelflow.cli_errors import failing_in_one_line
from reelflow.settings import Settings

gateway_app = typer.Typer(
    help="The resumable upload gateway (tus 1.0 at /uploads/) and its bearer tokens.",
)


@gateway_app.callback(invoke_without_command=True)
def gateway(
    ctx: typer.Context,
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on"),
    port: int = typer.Option(8080, "--port", min=0, max=65535, help="Port to listen on"),
) -> None:
    """Serve the upload gateway until interrupted (needs REELFLOW_GATEWAY_SECRET)."""
    if ctx.invoked_subcommand is not None:
        return
    with failing_in_one_line():
        from deployments.gateway.serve import serve_gateway  # lazy, see the module docstring

        try:
            serve_gateway(Settings(), host=host, port=port)
        except KeyboardInterrupt:
            raise typer.Exit(130) from None


@gateway_app.command("token")
def token(
    subject: str = typer.Argument(..., help="The creator the token is for (its uploads' owner)"),
    account: list[str] | None = typer.Option(
        None, "--account", help="A TikTok account its uploads may name; repeat for several"
    ),
    ttl: int | None = typer.Option(
        None,
        "--ttl",
        min=1,
        help="Seconds the token is valid (default: REELFLOW_GATEWAY_UPLOAD_TTL_S, so it "
        "outlives an upload it starts)",
    ),
    max_size: int | None = typer.Option(
        None, "--max-size", min=0, help="Largest upload this token may create, in bytes"
    ),
) -> None:
    """Print a bearer token (HS256 JWT) for SUBJECT, on one line."""
    with failing_in_one_line():
        from datetime import UTC, datetime

        from deployments.gateway.auth import gateway_secret
        from reelflow.gateway_tokens import mint

        settings = Settings()
        jwt = mint(
            gateway_secret(settings),
            subject,
            accounts=list(account or ()),
            ttl_s=ttl if ttl is not None else settings.gateway_upload_ttl_s,
            max_size=max_size,
            now=datetime.now(UTC),
        )
    typer.echo(jwt)
