"""The rules of a batch ingest (``reelflow ingest A B dir/ 'clips/*.mov' s3://bucket/prefix/``).

Pure: which arguments expand (globs, directories, ``s3://`` prefixes) and which stand for one
video, which listed names are videos, the order and de-duplication of what was found, each
source's outcome from its run's summary or its error, the batch's exit code, and the one JSON
document of the whole batch. The filesystem and S3 listings are ``reelflow.cli_batch``'s.

Exit codes: 0 only if every source succeeded; 2 if any input was rejected (a terminal refusal:
bad file, refused option, nothing matched); 1 otherwise (a failure a re-run can fix).

Must not: import boto3, prefect, the catalog or touch the filesystem.
"""

from __future__ import annotations

import glob
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from reelflow.planning import CONTENT_TYPES

# Bounded: a batch is held in memory, listed before anything is sent and shown in one table.
MAX_BATCH_SOURCES = 10_000
DEFAULT_PARALLEL = 3  # whole ingests at once; each keeps its own UploadPart concurrency
MAX_PARALLEL = 16

# What a directory or prefix listing picks up (any case: phones write .MOV). Explicit paths,
# globs and keys are taken as given: validation says what is wrong with them.
VIDEO_SUFFIXES = tuple(sorted({f".{ext}" for ext in CONTENT_TYPES} | {".m4v", ".mkv"}))

OK_OUTCOMES = ("stored", "published", "scheduled", "sent_to_inbox", "publishing")
REJECTED = "rejected"
FAILED = "failed"


def is_s3_prefix(arg: str) -> bool:
    """``s3://bucket/``, ``s3://bucket`` or ``s3://bucket/some/prefix/``: list it."""
    if not arg.startswith("s3://"):
        return False
    _, _, key = arg.removeprefix("s3://").partition("/")
    return key == "" or key.endswith("/")


def is_pattern(arg: str) -> bool:
    """A local glob (``*``, ``?``, ``[...]``); URLs and S3 URIs are never patterns."""
    return "://" not in arg and glob.has_magic(arg)


def is_video_name(name: str) -> bool:
    """A listed file is a video to ingest: a video suffix, not hidden, not an AppleDouble
    (``._clip.mov``) or a sidecar."""
    base = name.rstrip("/").rsplit("/", 1)[-1]
    return bool(base) and not base.startswith(".") and base.lower().endswith(VIDEO_SUFFIXES)


def unique(sources: Iterable[str]) -> list[str]:
    """First occurrence of each, in order: a source named twice is ingested once."""
    return list(dict.fromkeys(sources))


@dataclass(frozen=True)
class Found:
    """One source to ingest (``size_bytes`` when the listing told it: the live display's total)."""

    source: str
    size_bytes: int | None = None


@dataclass
class Result:
    """One source's line in the table and the JSON document."""

    source: str
    outcome: str
    media_id: str | None = None
    reason: str | None = None
    message: str | None = None
    bytes_sent: int = 0
    flow_run_id: str | None = None  # its ingest-video run in Prefect (none: it never started)
    summary: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        return self.outcome not in (REJECTED, FAILED)

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def outcome_of(summary: dict[str, Any]) -> str:
    """``stored``, or what became of the publish it asked for."""
    publish = summary.get("publish")
    if not publish:
        return "stored"
    status = str(publish.get("status") or "").upper()
    return {
        "PUBLISH_COMPLETE": "published",
        "SCHEDULED": "scheduled",
        "SEND_TO_USER_INBOX": "sent_to_inbox",
        "FAILED": FAILED,
    }.get(status, "publishing")


def succeeded(source: str, summary: dict[str, Any]) -> Result:
    outcome = outcome_of(summary)
    publish = summary.get("publish") or {}
    return Result(
        source=source,
        outcome=outcome,
        media_id=summary.get("media_id"),
        reason=publish.get("fail_reason") if outcome == FAILED else None,
        bytes_sent=int(summary.get("bytes_uploaded_this_run") or 0),
        summary=summary,
    )


def refused(source: str, reason: str, message: str, *, terminal: bool) -> Result:
    return Result(
        source=source, outcome=REJECTED if terminal else FAILED, reason=reason, message=message
    )


def exit_code(results: Sequence[Result]) -> int:
    """0 only if all succeeded; 2 if any input was rejected; else 1 (an empty batch is 2)."""
    if not results or any(r.outcome == REJECTED for r in results):
        return 2
    return 0 if all(r.ok for r in results) else 1


def counts(results: Sequence[Result]) -> dict[str, int]:
    return {
        "total": len(results),
        "succeeded": sum(r.ok for r in results),
        "rejected": sum(r.outcome == REJECTED for r in results),
        "failed": sum(r.outcome == FAILED for r in results),
    }


def document(results: Sequence[Result]) -> dict[str, Any]:
    """The whole batch as one JSON object (``--json``, or stdout not a terminal)."""
    return {
        "ok": exit_code(results) == 0,
        "exit_code": exit_code(results),
        "counts": counts(results),
        "bytes_sent": sum(r.bytes_sent for r in results),
        "results": [r.as_json() for r in results],
    }


def table_rows(results: Sequence[Result]) -> list[tuple[str, str, str, str, str]]:
    """(source, media id, outcome, bytes sent this run, reason) per source, in order."""
    return [
        (r.source, r.media_id or "", r.outcome, str(r.bytes_sent), r.reason or "") for r in results
    ]
