"""The ``delete-media`` flow: remove one stored media's objects and catalog rows.

Orchestration only; the rules and the row writes are :mod:`storage.catalog`'s
(:func:`~storage.catalog.begin_media_delete`, :func:`~storage.catalog.confirm_media_delete`,
:func:`~storage.catalog.finish_media_delete`). Order, so a kill at any point leaves either the
media as it was or a ``deleting`` media the same run finishes:

1. refuse while a publish of it is in flight or queued (``MediaInUseError``), else mark it
   ``deleting`` (from then on no publish starts on it);
2. look again for a publish that read the media before the mark;
3. delete the objects no other media row references (content-addressed keys are shared by
   content, so they are reference-counted);
4. delete the rows (the publishes TikTok has stay in the ledger: the post still exists there).
"""

from __future__ import annotations

from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from reelflow.errors import ConfigurationError, retry_if_retryable
from reelflow.logging import configure_logging, get_logger
from reelflow.settings import Settings
from storage.catalog import (
    MediaDeletePlan,
    begin_media_delete,
    confirm_media_delete,
    finish_media_delete,
)
from storage.runtime import Runtime


# NO_CACHE on purpose: a delete must act on the store as it is now; deleting a missing key is
# a no-op on both stores, so a retry or a re-run is safe.
@task(
    name="delete-media-objects",
    cache_policy=NO_CACHE,
    retries=3,
    retry_delay_seconds=exponential_backoff(1),
    retry_condition_fn=retry_if_retryable,
)
def delete_media_objects(rt: Runtime, keys: tuple[str, ...]) -> list[str]:
    for key in keys:
        rt.store.delete(key)
    return list(keys)


def _markdown(summary: dict[str, Any]) -> str:
    lines = [f"# delete-media {summary['media_id']}", ""]
    lines.append(f"dry run: {summary['dry_run']}")
    lines.append("")
    lines.append("| object | outcome |")
    lines.append("|---|---|")
    lines += [f"| `{k}` | deleted |" for k in summary["deleted_keys"]]
    lines += [f"| `{k}` | kept (another media references it) |" for k in summary["kept_keys"]]
    lines.append("")
    lines += [f"- {table}: {n} row(s) removed" for table, n in summary["rows_deleted"].items()]
    return "\n".join(lines)


@flow(name="delete-media", log_prints=True)
def delete_media(media_id: str, dry_run: bool = False) -> dict[str, Any]:
    """Delete a stored media: its objects (unless another media shares them) and its rows.

    Args:
        media_id: A media id from `reelflow media list`.
        dry_run: Only say what would be deleted (the same refusals apply; nothing changes).

    Refused while a publish of it is in flight or queued (`publish_in_flight`,
    `publish_scheduled`). Publishes TikTok already has stay in the ledger, so re-ingesting the
    same video never posts it twice. Running it again after a kill finishes the delete.
    """
    configure_logging()
    rt = Runtime.from_settings(Settings())
    engine = rt.catalog.engine
    log = get_logger(media_id=media_id)
    media = rt.catalog.get_media(media_id)
    if media is not None and media.store_url != rt.store.url:
        raise ConfigurationError(
            f"media {media_id} is stored in {media.store_url}, not in this worker's store "
            f"{rt.store.url}: run the delete with that REELFLOW_STORE_URL"
        )
    plan: MediaDeletePlan = begin_media_delete(engine, media_id, mark=not dry_run)
    summary: dict[str, Any] = {
        "media_id": media_id,
        "dry_run": dry_run,
        "deleted_keys": list(plan.delete_keys),
        "kept_keys": list(plan.kept_keys),
        "rows_deleted": {},
    }
    if not dry_run:
        confirm_media_delete(engine, media_id)
        delete_media_objects(rt, plan.delete_keys)
        summary["rows_deleted"] = finish_media_delete(engine, media_id)
        log.info(
            "media_deleted",
            objects_deleted=len(plan.delete_keys),
            objects_kept=len(plan.kept_keys),
            rows=summary["rows_deleted"],
        )
    create_markdown_artifact(
        markdown=_markdown(summary),
        key=f"delete-media-{media_id.lower().replace('_', '-')}"[:100],
        description=f"delete of media {media_id}",
    )
    return summary
