"""The one exception tree of reelflow.

Every error a caller can act on is a leaf of ``ReelflowError`` and says whether retrying can help
(``retryable``). Prefect's ``retry_condition_fn`` (see :func:`retry_if_retryable`) reads that flag
and nothing else decides retries. Foreign exceptions (botocore, requests, ffmpeg) are mapped to
these classes once, at the edge that calls the foreign library (``raise ... from exc``).

    ReelflowError
    ├── ValidationError            terminal: the input is not a publishable video (exit code 2)
    │   └── SourceNotFound         terminal: path/key/URL does not exist or cannot be read
    ├── ConfigurationError         terminal: settings are wrong
    ├── StorageError               object store or catalog failure
    │   ├── TransientStorageError  retryable: 5xx, throttling, connection reset
    │   ├── UploadNotFound         the multipart upload no longer exists (aborted/expired)
    │   └── IntegrityError         terminal: parts/checksums/sha256 do not match the plan
    ├── MediaToolError             terminal: ffmpeg/ffprobe failed on a valid input
    └── PublishError               TikTok publishing (see reelflow.tiktok.errors)
"""

from __future__ import annotations

from typing import Any


class ReelflowError(Exception):
    """Root of all reelflow errors."""

    retryable: bool = False
    exit_code: int = 1

    def __init__(self, message: str, **context: Any) -> None:
        super().__init__(message)
        self.message = message
        self.context = context

    def __str__(self) -> str:
        return self.message


class ValidationError(ReelflowError):
    """The input was rejected before anything was uploaded; retrying cannot help."""

    exit_code = 2

    def __init__(self, message: str, *, reason: str = "invalid", **context: Any) -> None:
        super().__init__(message, **context)
        self.reason = reason


class SourceNotFound(ValidationError):
    """The source path, object or URL does not exist or cannot be read."""

    def __init__(self, message: str, **context: Any) -> None:
        super().__init__(message, reason="source_not_found", **context)


class ConfigurationError(ReelflowError):
    """A setting is missing or inconsistent."""


class StorageError(ReelflowError):
    """The object store or the catalog failed."""


class TransientStorageError(StorageError):
    """A failure a later attempt can get past (5xx, throttling, dropped connection)."""

    retryable = True


class UploadNotFound(StorageError):
    """The staged multipart upload is gone (aborted or expired); a new one must be started."""


class IntegrityError(StorageError):
    """What the store holds does not match the plan (part count, sizes, checksums, sha256)."""


class MediaToolError(ReelflowError):
    """ffmpeg/ffprobe failed on an input that passed validation."""

    def __init__(self, message: str, *, stderr_tail: str = "", **context: Any) -> None:
        super().__init__(message, **context)
        self.stderr_tail = stderr_tail


class PublishError(ReelflowError):
    """Base for TikTok publishing errors (leaves live in reelflow.tiktok.errors)."""


def is_retryable(exc: BaseException | None) -> bool:
    """True when ``exc`` is a reelflow error that says a retry can succeed."""
    return isinstance(exc, ReelflowError) and exc.retryable


def retry_if_retryable(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect ``retry_condition_fn``: retry only errors flagged ``retryable``."""
    try:
        state.result()
    except Exception as exc:  # the state's exception is re-raised by result()
        return is_retryable(exc)
    return False
