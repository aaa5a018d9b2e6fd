"""TikTok commands of the ``reelflow`` CLI: ``accounts add|list|remove``, ``publish``,
``sandbox``. ``accounts list`` shows each account's token health
(:func:`storage.accounts.token_health`); ``accounts remove`` deletes the row and both tokens.

Mount them with :func:`register` (``register(app)`` on the main typer app), or use
``tiktok_app``, which already carries them; ``python -m reelflow.cli_tiktok`` runs it alone.

Exit codes: 0 success (a poll deadline is not an error: the publish stays resumable), 2 terminal
(bad input, unknown media or account, policy refusal, TikTok FAILED, revoked authorization:
running it again gets the same answer), 1 anything else. Errors are one line on stderr
(``error: <reason>: <message>``), typer's own usage errors included. Option values are checked
(:mod:`reelflow.ingest_options`) before anything starts. Tokens
are never printed, not even in ``--json`` output; pass them through the environment
(``REELFLOW_TIKTOK_ACCESS_TOKEN`` / ``REELFLOW_TIKTOK_REFRESH_TOKEN``) to keep them out of ``ps``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

# Prefect reads these at import time, so they are set before anything imports prefect.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")

# flows/, tasks/, storage/ and the sandbox are imported inside the commands that use them: they
# load prefect, SQLAlchemy or the sandbox's web server (seconds), which `--help` and a refused
# option must not wait for.
from reelflow.cli_errors import OneLineErrors, failing_in_one_line, quiet_prefect_console  # noqa: E402
from reelflow.errors import InputRejectedError  # noqa: E402
from reelflow.ingest_options import (  # noqa: E402
    PostOptions,
    check_account_name,
    check_publish_request,
)
from reelflow.logging import configure_logging, redact_value  # noqa: E402
from reelflow.settings import Settings  # noqa: E402

SANDBOX_REDIRECT_URI = "https://localhost/callback"  # what the sandbox registers by default

accounts_app = typer.Typer(help="TikTok accounts (tokens stored encrypted in the catalog).")


def note_existing_publish(publish: dict[str, Any] | None) -> None:
    """Say so (stderr) when the media was already on the account and nothing new was posted."""
    if publish and publish.get("options_differ"):
        typer.echo(
            f"note: {publish.get('media_id')} was already published to "
            f"{publish.get('account')!r} (publish_id {publish.get('publish_id')}, status "
            f"{publish.get('status')}); the caption/privacy/mode given were not used and "
            "nothing new was posted. Pass --again to post it again.",
            err=True,
        )


# The options the two run commands (``ingest`` and ``publish``) share, spelled once.
def again_option(what: str) -> Any:
    """``--again``: post ``what`` even if it is already on the account (once)."""
    return typer.Option(
        False, "--again", help=f"Post even if this {what} is already on the account (once)"
    )


def interaction_option(what: str) -> Any:
    """``--disable-<what>/--allow-<what>``: unset follows the creator's TikTok setting."""
    whats = f"{what}es" if what.endswith("h") else f"{what}s"
    return typer.Option(
        None,
        f"--disable-{what}/--allow-{what}",
        help=f"Turn {whats} off / on for this post (default: as the creator set it in TikTok; "
        f"a creator who turned {whats} off cannot allow them)",
        show_default=False,
    )


def brand_content_option() -> Any:
    return typer.Option(
        False,
        "--brand-content",
        help="Disclose a paid partnership (TikTok's 'Branded content'); not with SELF_ONLY",
    )


def brand_organic_option() -> Any:
    return typer.Option(
        False, "--brand-organic", help="Disclose that it promotes your own business ('Your brand')"
    )


def post_flags(
    disable_comment: bool | None,
    disable_duet: bool | None,
    disable_stitch: bool | None,
    brand_content: bool,
    brand_organic: bool,
) -> PostOptions:
    """The post options the flags above give (checked with the rest of the request)."""
    return PostOptions(
        disable_comment=disable_comment,
        disable_duet=disable_duet,
        disable_stitch=disable_stitch,
        brand_content_toggle=brand_content,
        brand_organic_toggle=brand_organic,
    )


def post_params(post: PostOptions) -> dict[str, Any]:
    """The flow parameters (``ingest-video``, ``publish-media``) that carry ``post``."""
    return {
        "disable_comment": post.disable_comment,
        "disable_duet": post.disable_duet,
        "disable_stitch": post.disable_stitch,
        "brand_content_toggle": post.brand_content_toggle,
        "brand_organic_toggle": post.brand_organic_toggle,
    }


def summary_json_option() -> Any:
    return typer.Option(False, "--json", help="Print the summary as one JSON line")


def verbose_option() -> Any:
    return typer.Option(False, "--verbose", "-v", help="Show Prefect's run logs")


def print_summary(summary: dict[str, Any], as_json: bool, *, title: str) -> None:
    """A run's summary on stdout: one JSON line, or a table; credentials scrubbed either way."""
    summary = redact_value(summary)  # nothing printed carries a credential, whatever its source
    if as_json:
        typer.echo(json.dumps(summary, default=str))
        return
    table = Table(title=title, show_header=False)
    for key, value in summary.items():
        table.add_row(key, str(value))
    Console().print(table)


def _settings() -> Settings:
    return Settings()


def _engine(settings: Settings) -> Any:
    from storage.catalog import make_engine  # lazy: loads SQLAlchemy (see the imports above)

    settings.home.mkdir(parents=True, exist_ok=True)
    return make_engine(settings.resolved_database_url)


def _account_view(row: Any) -> dict[str, Any]:
    """What may be shown about an account: everything but the tokens."""
    return {
        "name": row.name,
        "open_id": row.open_id,
        "scopes": row.scopes,
        "access_expires_at": row.access_expires_at.isoformat(),
        "refresh_expires_at": row.refresh_expires_at.isoformat()
        if row.refresh_expires_at
        else None,
        "updated_at": row.updated_at.isoformat(),
    }


@accounts_app.command("add")
def accounts_add(
    name: str = typer.Argument(..., help="A local name for the account"),
    access_token: str | None = typer.Option(
        None, "--access-token", envvar="REELFLOW_TIKTOK_ACCESS_TOKEN", show_default=False
    ),
    refresh_token: str | None = typer.Option(
        None, "--refresh-token", envvar="REELFLOW_TIKTOK_REFRESH_TOKEN", show_default=False
    ),
    expires_in: int = typer.Option(86400, "--expires-in", help="Access token lifetime (s)"),
    refresh_expires_in: int | None = typer.Option(
        None, "--refresh-expires-in", help="Refresh token lifetime (s)"
    ),
    open_id: str | None = typer.Option(None, "--open-id"),
    scopes: str = typer.Option(
        "video.publish,video.upload", "--scopes", help="Granted scopes, comma-separated"
    ),
    code: str | None = typer.Option(
        None, "--code", help="Authorization code to exchange", show_default=False
    ),
    redirect_uri: str = typer.Option(SANDBOX_REDIRECT_URI, "--redirect-uri"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Store an account's tokens (given, or exchanged from an authorization --code)."""
    with failing_in_one_line():
        from storage.accounts import save_account  # lazy: loads SQLAlchemy
        from storage.crypto import secret_box

        configure_logging()  # the client's log lines go to stderr: stdout is the --json line
        check_account_name(name)
        settings = _settings()
        engine = _engine(settings)
        if code is not None:
            from reelflow.tiktok.client import TikTokClient  # lazy: loads requests (~0.35 s)

            with TikTokClient(
                settings.tiktok_api_base,
                client_key=settings.tiktok_client_key,
                client_secret=settings.tiktok_client_secret.get_secret_value(),
            ) as client:
                tokens = client.exchange_code(code, redirect_uri)
            access_token, refresh_token = tokens.access_token, tokens.refresh_token
            expires_in, refresh_expires_in = tokens.expires_in, tokens.refresh_expires_in
            open_id, scopes = tokens.open_id or open_id, tokens.scope or scopes
        elif not access_token or not refresh_token:
            raise InputRejectedError(
                "give --access-token and --refresh-token, or --code", reason="missing_tokens"
            )
        assert access_token is not None and refresh_token is not None
        row = save_account(
            engine,
            secret_box(settings),
            name,
            access_token=access_token,
            refresh_token=refresh_token,
            expires_in=expires_in,
            refresh_expires_in=refresh_expires_in,
            open_id=open_id,
            scopes=scopes,
        )
    view = _account_view(row)
    if as_json:
        typer.echo(json.dumps(view))
    else:
        typer.echo(f"saved TikTok account {name} (open_id {view['open_id']}, scopes {row.scopes})")


@accounts_app.command("list")
def accounts_list(as_json: bool = typer.Option(False, "--json")) -> None:
    """List stored accounts with their token health (expiries, last refresh; never tokens)."""
    from storage.accounts import list_accounts, token_health  # lazy: loads SQLAlchemy
    from storage.clock import utcnow

    now = utcnow()
    rows = [
        {**_account_view(r), **token_health(r, now)} for r in list_accounts(_engine(_settings()))
    ]
    if as_json:
        typer.echo(json.dumps(rows))
        return
    table = Table(
        "name", "health", "scopes", "access expires in", "refresh expires in", "last refresh error"
    )
    for r in rows:
        table.add_row(
            r["name"],
            r["health"],
            r["scopes"],
            _duration(r["access_expires_in_s"]),
            _duration(r["refresh_expires_in_s"]),
            str(r["last_refresh_error"] or ""),
        )
    Console().print(table)


def _duration(seconds: int | None) -> str:
    """``3h 12m`` / ``expired 5m ago`` / ``unknown`` (TikTok sent no refresh lifetime)."""
    if seconds is None:
        return "unknown"
    span = abs(seconds)
    days, rest = divmod(span, 86400)
    hours, rest = divmod(rest, 3600)
    text = f"{days}d {hours}h" if days else f"{hours}h {rest // 60}m" if hours else f"{rest // 60}m"
    return text if seconds > 0 else f"expired {text} ago"


@accounts_app.command("remove")
def accounts_remove(
    name: str = typer.Argument(..., help="The account's local name"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Remove an account: its tokens are deleted from the catalog (publish history stays).

    TikTok keeps the authorization until the creator revokes the app in TikTok's settings.
    """
    with failing_in_one_line():
        from storage.accounts import remove_account  # lazy: loads SQLAlchemy

        check_account_name(name)
        if not remove_account(_engine(_settings()), name):
            raise InputRejectedError(f"no TikTok account named {name!r}", reason="no_such_account")
    if as_json:
        typer.echo(json.dumps({"name": name, "removed": True}))
    else:
        typer.echo(f"removed TikTok account {name} (its tokens are deleted)")


def publish(
    media_id: str = typer.Argument(..., help="A media id from `reelflow status`"),
    account: str = typer.Option(..., "--account", help="An account from `accounts add`"),
    caption: str | None = typer.Option(None, "--caption"),
    privacy: str = typer.Option("SELF_ONLY", "--privacy", help="Direct Post privacy level"),
    mode: str = typer.Option("direct", "--mode", help="direct | inbox"),
    poll_deadline_s: float | None = typer.Option(
        None, "--poll-deadline", help="Seconds to wait for TikTok's processing"
    ),
    again: bool = again_option("media"),
    disable_comment: bool | None = interaction_option("comment"),
    disable_duet: bool | None = interaction_option("duet"),
    disable_stitch: bool | None = interaction_option("stitch"),
    brand_content: bool = brand_content_option(),
    brand_organic: bool = brand_organic_option(),
    as_json: bool = summary_json_option(),
    verbose: bool = verbose_option(),
) -> None:
    """Publish stored media to TikTok, once per account (a re-run resumes or only polls;
    another caption finds the existing post unless --again)."""
    with failing_in_one_line():
        post = post_flags(
            disable_comment, disable_duet, disable_stitch, brand_content, brand_organic
        )
        check_publish_request(account, mode, privacy, caption, post=post)  # before anything
        if poll_deadline_s is not None and not poll_deadline_s >= 0:
            raise InputRejectedError(
                f"--poll-deadline {poll_deadline_s} must be 0 or more seconds",
                reason="invalid_poll_deadline",
            )
        from flows.publish import publish_media  # lazy: loads prefect
        from tasks.status_poll import DEFAULT_POLL_DEADLINE_S

        if not verbose:
            quiet_prefect_console()
        summary = publish_media(
            media_id=media_id,
            account=account,
            caption=caption,
            privacy=privacy,
            mode=mode,
            poll_deadline_s=DEFAULT_POLL_DEADLINE_S if poll_deadline_s is None else poll_deadline_s,
            again=again,
            **post_params(post),
        )
    note_existing_publish(summary)
    print_summary(summary, as_json, title=f"TikTok publish of {media_id}")


def sandbox(
    host: str = typer.Option("127.0.0.1", "--host"),
    port: int = typer.Option(8700, "--port"),
    data_dir: Path | None = typer.Option(None, "--data-dir", help="Default: HOME/sandbox"),
) -> None:
    """Serve the local TikTok Content Posting API sandbox (admin routes under /_sandbox/)."""
    from reelflow.tiktok.sandbox import run_sandbox  # lazy: loads uvicorn and ffmpeg-python

    configure_logging()
    run_sandbox(host, port, data_dir or _settings().home / "sandbox")


def register(app: typer.Typer) -> None:
    """Add ``accounts``, ``publish`` and ``sandbox`` to ``app``."""
    app.add_typer(accounts_app, name="accounts")
    app.command("publish")(publish)
    app.command("sandbox")(sandbox)


tiktok_app = typer.Typer(
    help="reelflow TikTok publishing: accounts, publish, sandbox.", cls=OneLineErrors
)
register(tiktok_app)


if __name__ == "__main__":  # pragma: no cover - `python -m reelflow.cli_tiktok ...`
    sys.exit(tiktok_app())
