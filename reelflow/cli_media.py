"""``reelflow media list|show|delete``: the stored media, one media in full, and deleting one.

Mounted on the main app with :func:`register`. ``delete`` runs the ``delete-media`` flow in
this process (the same flow the ``delete-media`` deployment serves): it refuses while a publish
of the media is in flight or queued (``error: publish_in_flight: …``, exit 1: the same command
works once the publish is done), deletes the objects no other media references and the rows.

Exit codes as everywhere: 0 success, 2 terminal (unknown media, a refused option), 1 the rest;
errors are one line on stderr. Nothing printed carries a token or a presigned URL.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from reelflow.cli_errors import failing_in_one_line, quiet_prefect_console
from reelflow.errors import InputRejectedError
from reelflow.logging import install_log_redaction, redact_text
from reelflow.settings import Settings

media_app = typer.Typer(help="Stored media: list, show, delete.")


def _catalog() -> Any:
    from storage.catalog import Catalog, make_engine  # lazy: loads SQLAlchemy

    settings = Settings()
    settings.home.mkdir(parents=True, exist_ok=True)
    return Catalog(make_engine(settings.resolved_database_url))


def _publish_view(row: Any) -> dict[str, Any]:
    """A publish row without its encrypted columns (the upload URL)."""
    return {k: v for k, v in row.model_dump(mode="json").items() if not k.endswith("_enc")}


def _echo_json(doc: Any) -> None:
    typer.echo(redact_text(json.dumps(doc, default=str)))


@media_app.command("list")
def media_list(as_json: bool = typer.Option(False, "--json", help="One JSON document")) -> None:
    """Every stored media, oldest first, with how many publishes each has."""
    from storage.publishing import list_publishes  # lazy

    catalog = _catalog()
    rows = catalog.list_media()
    counts: dict[str, int] = {}
    for p in list_publishes(catalog.engine):
        counts[p.media_id] = counts.get(p.media_id, 0) + 1
    views = [
        {
            "media_id": r.media_id,
            "status": r.status,
            "size_bytes": r.size_bytes,
            "duration_s": r.duration_s,
            "resolution": f"{r.width}x{r.height}",
            "content_type": r.content_type,
            "created_at": r.created_at.isoformat(),
            "publishes": counts.get(r.media_id, 0),
        }
        for r in rows
    ]
    if as_json:
        _echo_json({"media": views})
        return
    table = Table("media_id", "status", "size", "duration", "resolution", "created", "publishes")
    for v in views:
        table.add_row(
            v["media_id"],
            v["status"],
            str(v["size_bytes"]),
            f"{v['duration_s']:.1f}s",
            v["resolution"],
            v["created_at"],
            str(v["publishes"]),
        )
    Console().print(table)


@media_app.command("show")
def media_show(
    media_id: str = typer.Argument(..., help="A media id from `reelflow media list`"),
    as_json: bool = typer.Option(False, "--json", help="One JSON document"),
) -> None:
    """One media in full: its row, its objects, its publishes and scheduled posts."""
    with failing_in_one_line():
        from storage.publishing import list_publishes  # lazy
        from storage.schedule import list_scheduled

        catalog = _catalog()
        media = catalog.get_media(media_id)
        if media is None:
            raise InputRejectedError(f"no stored media {media_id!r}", reason="media_not_found")
        doc = {
            "media": media.model_dump(mode="json"),
            "objects": {
                "video": catalog_uri(media, media.video_key),
                "thumbnail": catalog_uri(media, media.thumbnail_key),
                "metadata": catalog_uri(media, media.metadata_key),
            },
            "publishes": [_publish_view(p) for p in list_publishes(catalog.engine, media_id)],
            "scheduled": [
                s.model_dump(mode="json") for s in list_scheduled(catalog.engine, media_id)
            ],
        }
    if as_json:
        _echo_json(doc)
        return
    table = Table(show_header=False, title=f"media {media_id}")
    for key, value in doc["media"].items():
        table.add_row(key, str(value))
    for key, value in doc["objects"].items():
        table.add_row(f"object: {key}", value)
    console = Console()
    console.print(table)
    if doc["publishes"]:
        pubs = Table("account", "mode", "status", "publish_id", "post_id", title="publishes")
        for p in doc["publishes"]:
            pubs.add_row(
                p["account"], p["mode"], p["status"], str(p["publish_id"]), str(p["post_id"])
            )
        console.print(pubs)


def catalog_uri(media: Any, key: str) -> str:
    """Where an object of ``media`` is: its store's URL and the key (never a presigned URL)."""
    return f"{media.store_url.rstrip('/')}/{key}"


@media_app.command("delete")
def media_delete(
    media_id: str = typer.Argument(..., help="A media id from `reelflow media list`"),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask (needed without a terminal)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="Only say what would be deleted"),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as one JSON line"),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show Prefect's run logs"),
) -> None:
    """Delete a media's objects and catalog rows (the delete-media flow, in this process).

    Objects another media still references stay; publishes TikTok has stay in the ledger.
    """
    with failing_in_one_line():
        if not (yes or dry_run):
            if not sys.stdin.isatty():
                raise InputRejectedError(
                    f"deleting {media_id} needs --yes when there is no terminal to ask on",
                    reason="confirmation_needed",
                )
            if not typer.confirm(f"delete media {media_id} and its stored objects?"):
                raise InputRejectedError("nothing deleted", reason="not_confirmed")
        from flows.media_admin import delete_media  # lazy: loads prefect

        install_log_redaction()
        if not verbose:
            quiet_prefect_console()
        summary = delete_media(media_id=media_id, dry_run=dry_run)
    if as_json:
        _echo_json(summary)
        return
    verb = "would delete" if dry_run else "deleted"
    typer.echo(f"{verb} media {media_id}: {len(summary['deleted_keys'])} object(s)")
    for key in summary["deleted_keys"]:
        typer.echo(f"  {verb} {key}")
    for key in summary["kept_keys"]:
        typer.echo(f"  kept {key} (another media references it)")
    for table, n in summary["rows_deleted"].items():
        typer.echo(f"  {table}: {n} row(s)")


def register(app: typer.Typer) -> None:
    """Add ``media`` to ``app``."""
    app.add_typer(media_app, name="media")
