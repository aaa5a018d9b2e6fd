"""The ``reelflow`` command line (typer): ingest, sandbox, status.

Exit codes: 0 success, 2 input rejected (validation), 1 anything else; the error is one line
on stderr. With ``--json`` the last stdout line is the run's summary as one JSON object.
"""

from __future__ import annotations

import json
import os
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

# Prefect reads these at import time, so they are set before anything imports prefect.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")

# flows/, storage/ and deployments.serve are imported inside the commands that use them: they load
# prefect and SQLAlchemy (seconds), which `--help` and a refused option must not wait for.
from deployments.events_cli import events_app  # noqa: E402  (imports only typer; the rest is lazy)
from deployments.gateway.cli import gateway_app  # noqa: E402  (typer only; the rest is lazy)
from reelflow import batch  # noqa: E402
from reelflow.batch import DEFAULT_PARALLEL, MAX_PARALLEL  # noqa: E402
from reelflow.cli_batch import (  # noqa: E402
    expand,
    live_board,
    local_size,
    needs_batch,
    result_for_error,
    run_batch,
)
from reelflow.cli_errors import (  # noqa: E402
    OneLineErrors,
    error_line,
    failing_in_one_line,
    quiet_prefect_console,
)
from reelflow.cli_media import register as _register_media  # noqa: E402
from reelflow.cli_runner import runner_app  # noqa: E402  (stdlib + typer)
from reelflow.cli_tiktok import (  # noqa: E402
    again_option,
    brand_content_option,
    brand_organic_option,
    interaction_option,
    note_existing_publish,
    post_flags,
    print_summary,
    summary_json_option,
    verbose_option,
)
from reelflow.cli_tiktok import register as _register_tiktok  # noqa: E402
from reelflow.credentials import sealed  # noqa: E402
from reelflow.errors import InputRejectedError  # noqa: E402
from reelflow.ingest_options import check_ingest_request  # noqa: E402
from reelflow.logging import install_log_redaction, redact_text, redact_value  # noqa: E402
from reelflow.progress import progress_listener  # noqa: E402
from reelflow.samples import make_clip  # noqa: E402
from reelflow.settings import Settings  # noqa: E402

app = typer.Typer(
    help="reelflow: resumable video ingest and TikTok publishing on Prefect.",
    pretty_exceptions_enable=False,
    cls=OneLineErrors,  # typer's usage errors as one `error: <reason>: <message>` line, exit 2
)

app.add_typer(events_app, name="s3-events", help="Bridge S3 bucket events into Prefect events")
app.add_typer(gateway_app, name="gateway")  # tus upload gateway + its tokens
_register_tiktok(app)  # accounts, publish, sandbox
_register_media(app)  # media list|show|delete
app.add_typer(runner_app, name="runner")  # the warm runner's status|stop (docs/runner.md)


@app.command()
def ingest(
    sources: list[str] | None = typer.Argument(
        None,
        help="Local paths, directories, globs, s3://bucket/key, s3://bucket/prefix/ or "
        "http(s):// URLs (or --upload)",
        metavar="SOURCE...",
        show_default=False,
    ),
    chunk_size: int | None = typer.Option(None, "--chunk-size", help="Part size in bytes"),
    concurrency: int | None = typer.Option(
        None, "--concurrency", help="UploadPart requests at once"
    ),
    account: str | None = typer.Option(None, "--account", help="TikTok account to publish to"),
    caption: str | None = typer.Option(None, "--caption", help="Post caption (Direct Post)"),
    privacy: str | None = typer.Option(
        None,
        "--privacy",
        help="PUBLIC_TO_EVERYONE | MUTUAL_FOLLOW_FRIENDS | FOLLOWER_OF_CREATOR | SELF_ONLY",
    ),
    mode: str | None = typer.Option(None, "--mode", help="direct | inbox | none"),
    publish_at: datetime | None = typer.Option(
        None, "--publish-at", help="Publish later (ISO 8601 with timezone); queued for publish-due"
    ),
    again: bool = again_option("video"),
    # TikTok post options (H-media): interactions and commercial content disclosure.
    disable_comment: bool | None = interaction_option("comment"),
    disable_duet: bool | None = interaction_option("duet"),
    disable_stitch: bool | None = interaction_option("stitch"),
    brand_content: bool = brand_content_option(),
    brand_organic: bool = brand_organic_option(),
    as_json: bool = summary_json_option(),
    verbose: bool = verbose_option(),
    upload: str | None = typer.Option(
        None, "--upload", help="A gateway upload's id: ingest it as its metadata asks"
    ),
    parallel: int = typer.Option(
        DEFAULT_PARALLEL,
        "--parallel",
        min=1,
        max=MAX_PARALLEL,
        help="Sources ingested at once when given many",
    ),
) -> None:
    """Run the ingest-video flow in this process for each source (and publish when --account
    is given). Many sources end with a table (or one JSON document when --json or not on a
    terminal); exit 0 only if all succeeded, 2 if any input was rejected, else 1."""
    if upload is not None or not sources:
        source = ",".join(sources) if sources else None
        summary = _ingest_upload(upload, source, again=again, verbose=verbose)
        print_summary(summary, as_json, title=f"ingested {summary['media_id']}")
        return
    options: dict[str, Any] = {
        "chunk_size_bytes": chunk_size,
        "concurrency": concurrency,
        "account": account,
        "caption": caption,
        "privacy_level": privacy,  # validated by the flow (and checked below)
        "mode": mode,
        "publish_at": publish_at,
        "again": again,
    }
    live = not as_json and not verbose and sys.stdout.isatty() and sys.stderr.isatty()
    with failing_in_one_line():
        settings = Settings()
        post = post_flags(
            disable_comment, disable_duet, disable_stitch, brand_content, brand_organic
        )
        options.update(
            disable_comment=post.disable_comment,
            disable_duet=post.disable_duet,
            disable_stitch=post.disable_stitch,
            brand_content_toggle=post.brand_content_toggle,
            brand_organic_toggle=post.brand_organic_toggle,
        )
        # The flow checks the same rules; checked here first, before anything (Prefect) starts.
        check_ingest_request(
            settings,
            chunk_size,
            concurrency,
            account,
            caption,
            privacy,
            mode,
            publish_at,
            post=post,
        )
        if needs_batch(sources):
            found, empty = expand(sources, settings)
        install_log_redaction()
        if not verbose:
            quiet_prefect_console()
        if needs_batch(sources):
            with live_board(settings, live) as board:
                results = run_batch(found, options, parallel=parallel, board=board)
            raise typer.Exit(report_batch([*empty, *results], as_json=as_json or not live))
        from flows.ingest import ingest_video  # lazy: loads prefect (see the imports above)

        # Credentials in the URL stay in this process: the run's parameter is the public form.
        with sealed(sources[0]) as src, live_board(settings, live) as board:
            flow: Any = ingest_video
            if board is not None:
                board.add(src.public, local_size(sources[0]))
                progress_listener.set(board.listener(src.public))
                flow = ingest_video.with_options(on_running=[board.on_running(src.public)])
            try:
                summary = flow(source=src.public, source_secret=src.ref, **options)
            except Exception as exc:
                if board is not None:
                    board.finish(src.public, result_for_error(src.public, exc))
                raise
            if board is not None:
                board.finish(src.public, batch.succeeded(src.public, summary))
    note_existing_publish(summary.get("publish"))
    print_summary(summary, as_json, title=f"ingested {summary['media_id']}")


def report_batch(results: list[batch.Result], *, as_json: bool) -> int:
    """The batch's table (or JSON document) on stdout, a line per failed source on stderr;
    returns the exit code."""
    for r in results:
        note_existing_publish((r.summary or {}).get("publish"))
        if not r.ok:
            typer.echo(error_line(r.reason or r.outcome, f"{r.source}: {r.message}"), err=True)
    if as_json:
        typer.echo(json.dumps(redact_value(batch.document(results)), default=str))
    else:
        counts = batch.counts(results)
        table = Table(title=f"ingested {counts['succeeded']} of {counts['total']}")
        for name in ("source", "media_id", "outcome", "sent", "reason"):
            # Paths fold and ids stay on one line: both whole, never cut with an ellipsis.
            table.add_column(name, overflow="fold", no_wrap=name == "media_id")
        for row in batch.table_rows(results):
            table.add_row(*(redact_text(cell) for cell in row))
        Console().print(table)
    return batch.exit_code(results)


def _ingest_upload(
    upload: str | None, source: str | None, *, again: bool, verbose: bool
) -> dict[str, Any]:
    """`reelflow ingest --upload ID`: the gateway's embedded hand-off runs this (and a person
    may, to retry an upload); the options are the upload's own metadata."""
    with failing_in_one_line():
        if upload is None or source is not None:
            raise InputRejectedError(
                "give a SOURCE, or --upload ID alone (an upload's options are its metadata)",
                reason="bad_usage",
            )
        from flows.ingest import ingest_video  # lazy: loads prefect (see the imports above)

        install_log_redaction()
        if not verbose:
            quiet_prefect_console()
        summary: dict[str, Any] = ingest_video(source=f"tus:{upload}", upload=upload, again=again)
    return summary


@app.command()
def status(
    media_id: str | None = typer.Argument(None),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """List stored media (or one) with their publishes and scheduled posts."""
    # Lazy: storage loads SQLAlchemy (see the imports above).
    from storage.catalog import Catalog, make_engine
    from storage.publishing import list_publishes
    from storage.schedule import list_scheduled

    catalog = Catalog(make_engine(Settings().resolved_database_url))
    rows = [m for m in catalog.list_media() if media_id in (None, m.media_id)]
    if media_id and not rows:
        typer.echo(error_line("not_found", f"no media {media_id}"), err=True)
        raise typer.Exit(1)
    publishes = list_publishes(catalog.engine, media_id)
    scheduled = list_scheduled(catalog.engine, media_id)
    if as_json:
        # The catalog keeps public URLs only; the redactor guards rows written before that.
        typer.echo(
            redact_text(
                json.dumps(
                    {
                        "media": [r.model_dump(mode="json") for r in rows],
                        "publishes": [
                            {
                                k: v
                                for k, v in p.model_dump(mode="json").items()
                                if not k.endswith("_enc")
                            }
                            for p in publishes
                        ],
                        "scheduled": [s.model_dump(mode="json") for s in scheduled],
                    }
                )
            )
        )
        return
    console = Console()
    media_table = Table(
        "media_id", "status", "size", "duration", "resolution", "video_key", title="media"
    )
    for r in rows:
        media_table.add_row(
            r.media_id,
            r.status,
            str(r.size_bytes),
            f"{r.duration_s:.1f}s",
            f"{r.width}x{r.height}",
            r.video_key,
        )
    console.print(media_table)
    if publishes:
        pub_table = Table(
            "media_id",
            "account",
            "mode",
            "status",
            "publish_id",
            "post_id",
            "fail_reason",
            title="publishes",
        )
        for p in publishes:
            pub_table.add_row(
                p.media_id,
                p.account,
                p.mode,
                p.status,
                p.publish_id or "",
                p.post_id or "",
                p.fail_reason or "",
            )
        console.print(pub_table)
    if scheduled:
        sched_table = Table(
            "media_id", "account", "mode", "due_at", "status", "last_error", title="scheduled"
        )
        for s in scheduled:
            sched_table.add_row(
                s.media_id, s.account, s.mode, s.due_at.isoformat(), s.status, s.last_error or ""
            )
        console.print(sched_table)


@app.command()
def serve(
    limit: int | None = typer.Option(None, "--limit", help="Most flow runs at once"),
    only: list[str] | None = typer.Option(None, "--only", help="Serve only these deployments"),
) -> None:
    """Serve every deployment in prefect.yaml (schedules and triggers) from this process."""
    from deployments.serve import serve_all  # lazy: loads prefect (see the imports above)

    serve_all(limit=limit, only=only)


@app.command()
def sample(
    out: Path = typer.Argument(Path("sample.mp4")),
    duration: float = typer.Option(20.0, "--duration"),
    width: int = typer.Option(720, "--width"),
    height: int = typer.Option(1280, "--height"),
) -> None:
    """Generate a vertical H.264 + AAC sample clip with ffmpeg."""
    make_clip(out, width=width, height=height, duration_s=duration)
    typer.echo(str(out))


def main() -> int:  # pragma: no cover
    app()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
