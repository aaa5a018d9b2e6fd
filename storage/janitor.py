"""Housekeeping for the `cleanup` flow: what a killed or abandoned run leaves behind.

Finds, and unless ``dry_run`` removes: incomplete multipart uploads older than a TTL (as the
store lists them, and as the ledger remembers them), stale staging objects, completed objects
under ``videos/`` that no media row references (an upload completes at its final key before it
is verified and recorded: a run that failed or was killed in between, and never came back,
leaves it there), stale upload sessions, and Prefect's cached chunk results of sessions that
finished or were abandoned. Anything a live run holds (an unexpired lease), or a gateway upload
still owns, is left alone. Returns one row per finding.
"""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from reelflow.planning import VIDEOS_PREFIX, sidecar_key, video_key
from storage.catalog import UploadSession, media_keys
from storage.clock import aware
from storage.gateway_sweep import gateway_session_ids
from storage.runtime import Runtime

ABANDONED = "abandoned"


@dataclass(frozen=True)
class Finding:
    kind: str  # multipart_upload | staging_object | unreferenced_object | session | cached_results
    what: str
    age_h: float
    action: str  # removed | would remove | kept (live run)

    def as_row(self) -> dict[str, object]:
        return asdict(self)


def _age_h(dt: datetime, now: datetime) -> float:
    return round((now - aware(dt)).total_seconds() / 3600, 2)


def sweep(
    rt: Runtime,
    *,
    upload_ttl: timedelta,
    results_dir: Path | None,
    dry_run: bool,
    now: datetime | None = None,
) -> list[Finding]:
    now = now or datetime.now(UTC)
    cutoff = now - upload_ttl
    live = rt.catalog.live_session_ids(now)
    verb = "would remove" if dry_run else "removed"
    found: list[Finding] = []
    sessions = rt.catalog.list_sessions()
    by_upload = {row.upload_id: row for row in sessions if row.upload_id}
    by_staging = {row.staging_key: row for row in sessions}

    # 1. Incomplete multipart uploads the store still holds (at final keys, and staged by
    # sessions opened before uploads went to their final key).
    pending_uploads = rt.store.list_uploads(VIDEOS_PREFIX) + rt.store.list_uploads("staging/")
    for pending in pending_uploads:
        row = by_upload.get(pending.upload_id) or by_staging.get(pending.key)
        if aware(pending.initiated) > cutoff:
            continue
        if row is not None and row.id in live:
            found.append(
                Finding(
                    "multipart_upload",
                    pending.upload_id,
                    _age_h(pending.initiated, now),
                    "kept (live run)",
                )
            )
            continue
        if not dry_run:
            rt.store.abort_upload(pending.key, pending.upload_id)
        found.append(
            Finding(
                "multipart_upload",
                f"{pending.key} ({pending.upload_id})",
                _age_h(pending.initiated, now),
                verb,
            )
        )

    # 2. Staging objects (assembled but never moved, or left by a crash).
    for key, modified in rt.store.list_objects("staging/"):
        if aware(modified) > cutoff:
            continue
        row = by_staging.get(key)
        if row is not None and row.id in live:
            continue
        if not dry_run:
            rt.store.delete(key)
        found.append(Finding("staging_object", key, _age_h(modified, now), verb))

    # 2b. Completed videos (and thumbnails) no media row references and no run still owns.
    gateway_owned = gateway_session_ids(rt.catalog.engine)
    kept = _referenced_keys(rt, sessions, live | gateway_owned)
    for key, modified in rt.store.list_objects(VIDEOS_PREFIX):
        if key in kept or aware(modified) > cutoff:
            continue
        if not dry_run:
            rt.store.delete(key)
        found.append(Finding("unreferenced_object", key, _age_h(modified, now), verb))

    # 3. Sessions nobody came back for: forget their ledger, mark them abandoned. A gateway
    # upload's session is its gateway's (expire_uploads): its bytes may take days to arrive.
    for row in sessions:
        if row.status not in ("open", "assembled") or row.id in live or row.id in gateway_owned:
            continue
        if aware(row.updated_at) > cutoff:
            continue
        if not dry_run:
            if row.upload_id:
                rt.store.abort_upload(row.staging_key, row.upload_id)
                rt.catalog.forget_parts(row.upload_id)
            rt.catalog.update_session(row.id, status=ABANDONED, error="abandoned: cleaned up")
        found.append(Finding("session", row.id, _age_h(row.updated_at, now), verb))

    # 4. Prefect's cached chunk results of sessions that are over (they would never be read).
    if results_dir is not None and results_dir.exists():
        over = {r.id for r in sessions if r.status in ("completed", "aborted", ABANDONED)}
        if not dry_run:
            over |= {f.what for f in found if f.kind == "session"}
        for session_dir in sorted(p for p in results_dir.iterdir() if p.is_dir()):
            if session_dir.name in over and session_dir.name not in live:
                mtime = datetime.fromtimestamp(session_dir.stat().st_mtime, UTC)
                if not dry_run:
                    shutil.rmtree(session_dir, ignore_errors=True)
                found.append(Finding("cached_results", session_dir.name, _age_h(mtime, now), verb))
    return found


def _referenced_keys(rt: Runtime, sessions: list[UploadSession], owned: set[str]) -> set[str]:
    """Every key of this store's media rows; every key a session in ``owned`` may still store
    (its upload's, and the content key a gateway upload is moved to); and the key of every
    completed session of this store, with sidecars. A completed session's media row can name
    another store (media ids are content-derived, one row per content in a shared catalog):
    its video here is still the one that session stored."""
    keys = {
        k for m in rt.catalog.list_media() if m.store_url == rt.store.url for k in media_keys(m)
    }
    for row in sessions:
        if row.id not in owned and not (
            row.status == "completed" and row.store_url == rt.store.url
        ):
            continue
        videos = [row.staging_key] + ([video_key(row.sha256, row.ext)] if row.sha256 else [])
        keys |= {k for v in videos for k in (v, sidecar_key(v, "jpg"), sidecar_key(v, "json"))}
    return keys
