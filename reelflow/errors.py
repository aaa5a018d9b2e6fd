"""The one exception tree of reelflow.

Every error a caller can act on is a leaf of ``ReelflowError`` and says whether retrying can help
(``retryable``). Prefect's ``retry_condition_fn`` (see :func:`retry_if_retryable`) reads that flag
and nothing else decides retries. Foreign exceptions (botocore, requests, ffmpeg) are mapped to
these classes once, at the edge that calls the foreign library (``raise ... from exc``).

    ReelflowError
    ├── InputRejectedError             terminal: the input or a request is refused (exit code 2)
    │   ├── SourceNotFoundError        terminal: path/key/URL does not exist or cannot be read
    │   ├── SourceRefusedError         terminal: scheme/address/redirect policy refused a URL (SSRF)
    │   ├── SourceChangedError         terminal: the source is not the version pinned for the run
    │   ├── InfectedError              terminal: the virus scanner found a signature
    │   ├── MalformedNotificationError terminal: an S3 event notification that cannot be read
    │   └── LengthExceededError        terminal: a tus PATCH body past Upload-Length (storage.tus_writer)
    ├── ConfigurationError             terminal: settings are wrong
    │   └── ScanLimitExceededError     terminal: clamd could not scan it whole (raise its limit)
    ├── StorageError                   object store or catalog failure
    │   ├── TransientStorageError      retryable: 5xx, throttling, connection reset
    │   ├── UploadNotFoundError        the multipart upload no longer exists (aborted/expired)
    │   ├── LeaseLostError             retryable by a later run: another run holds the lease
    │   ├── IntegrityCheckError        terminal: parts/checksums/sha256 do not match the plan
    │   ├── SourceTimeoutError         terminal: the source's total read deadline passed
    │   └── UploadConflictError        a tus upload changed under this request (storage.tus_writer)
    ├── ChecksumMismatchError          terminal: a tus PATCH body is not its Upload-Checksum (460)
    ├── TusError                       a tus request refused with a status (reelflow.tus)
    ├── TokenError                     a gateway bearer token missing/expired/forged (401)
    ├── MediaToolError                 terminal: ffmpeg/ffprobe failed on a valid input
    ├── ScannerUnavailableError        retryable: clamd unreachable, timed out or answered an error
    ├── EventDeliveryError             the S3-event bridge could not hand an event on
    ├── MediaInUseError                a media delete refused: a publish of it is in flight/queued
    └── PublishError                   TikTok publishing (leaves in reelflow.tiktok.errors)
        ├── PublishRefusedError        terminal: refused before TikTok would (privacy, duration)
        └── TikTokApiError             one class per TikTok error code (AuthorizationRevokedError
                                       in reelflow.tiktok.tokens)

The names of pydantic's ``ValidationError`` and SQLAlchemy's ``IntegrityError`` are not reused,
so no module needs an alias for either. The TikTok sandbox (an emulator of TikTok's side) has
errors of its own outside this tree.
"""

from __future__ import annotations

from typing import Any

from reelflow.logging import redact_text  # the one redactor: messages reach Prefect


class ReelflowError(Exception):
    """Root of all reelflow errors."""

    retryable: bool = False
    exit_code: int = 1

    def __init__(self, message: str, **context: Any) -> None:
        message = redact_text(message)
        super().__init__(message)
        self.message = message
        self.context = context

    def __str__(self) -> str:
        return self.message


class InputRejectedError(ReelflowError):
    """The input was rejected before anything was uploaded; retrying cannot help."""

    exit_code = 2

    def __init__(self, message: str, *, reason: str = "invalid", **context: Any) -> None:
        super().__init__(message, **context)
        self.reason = reason


class SourceNotFoundError(InputRejectedError):
    """The source path, object or URL does not exist or cannot be read."""

    def __init__(self, message: str, **context: Any) -> None:
        super().__init__(message, reason="source_not_found", **context)


class ConfigurationError(ReelflowError):
    """A setting is missing or inconsistent."""


class SourceRefusedError(InputRejectedError):
    """A URL source was refused before anything was fetched from it: a scheme other than
    http(s), an address that is not public, or a redirect chain that breaks those rules."""

    def __init__(self, message: str, *, reason: str = "source_refused", **context: Any) -> None:
        super().__init__(message, reason=reason, **context)


class SourceChangedError(InputRejectedError):
    """The source is no longer the version resolved at the start of the run (ETag, VersionId,
    size/mtime), or the bytes read for upload are not the video that was validated. Terminal
    for this run: a new run pins the new version and validates it."""

    def __init__(self, message: str, **context: Any) -> None:
        super().__init__(message, reason="source_changed", **context)


class InfectedError(InputRejectedError):
    """ClamAV found a signature in the assembled object: it is never stored or published."""

    def __init__(self, message: str, *, signature: str, **context: Any) -> None:
        super().__init__(message, reason="infected", signature=signature, **context)
        self.signature = signature


class ScanLimitExceededError(ConfigurationError):
    """clamd stopped before it saw the whole object (StreamMaxLength, MaxFileSize, MaxScanSize,
    MaxScanTime, or ClamAV's own 2 GiB ceiling): no verdict, and retrying cannot get one."""

    reason = "scan_limit"

    def __init__(self, message: str, *, limit: str, **context: Any) -> None:
        super().__init__(message, limit=limit, **context)
        self.limit = limit


class StorageError(ReelflowError):
    """The object store or the catalog failed."""


class TransientStorageError(StorageError):
    """A failure a later attempt can get past (5xx, throttling, dropped connection)."""

    retryable = True


class UploadNotFoundError(StorageError):
    """The staged multipart upload is gone (aborted or expired); a new one must be started."""


class LeaseLostError(StorageError):
    """This run no longer holds the source's lease (its fencing token is stale): it stops, and
    leaves the staged upload to the run that holds the lease now. Retryable by a later run,
    never by a task retry inside this one (see :func:`retry_if_retryable`)."""

    retryable = True
    reason = "lease_lost"


class IntegrityCheckError(StorageError):
    """What the store holds does not match the plan (part count, sizes, checksums, sha256)."""


class SourceTimeoutError(StorageError):
    """Reading the source took longer than REELFLOW_SOURCE_READ_DEADLINE_S in total.

    Not retryable: the deadline is the run's whole budget for the source, and a task retry
    would start the read over and spend it again."""

    reason = "source_deadline"


class MediaToolError(ReelflowError):
    """ffmpeg/ffprobe failed on an input that passed validation."""

    def __init__(self, message: str, *, stderr_tail: str = "", **context: Any) -> None:
        super().__init__(message, **context)
        self.stderr_tail = stderr_tail


class ScannerUnavailableError(ReelflowError):
    """clamd could not be reached, timed out, dropped the stream or answered an error."""

    retryable = True
    reason = "scanner_unavailable"


class MediaInUseError(ReelflowError):
    """A media cannot be deleted now: a publish of it is in flight or queued (``reason``
    ``publish_in_flight`` / ``publish_scheduled``, ``publish_ids`` the rows). Not retryable by
    a task (the publish may take minutes); the same delete succeeds once it has finished."""

    retryable = False

    def __init__(self, message: str, *, reason: str, **context: Any) -> None:
        super().__init__(message, reason=reason, **context)
        self.reason = reason

    def __reduce__(self) -> tuple[Any, ...]:  # Prefect pickles exceptions into states
        return (_rebuild_in_use, (self.message, self.reason, self.context))


def _rebuild_in_use(message: str, reason: str, context: dict[str, Any]) -> MediaInUseError:
    context = {k: v for k, v in context.items() if k != "reason"}
    return MediaInUseError(message, reason=reason, **context)


class PublishError(ReelflowError):
    """Base for TikTok publishing errors (leaves live in reelflow.tiktok.errors)."""


class PublishRefusedError(PublishError):
    """reelflow refuses to start a publish TikTok would refuse (privacy, duration, caption).

    Terminal: the same request gets the same answer until the creator's settings change.
    ``reason`` says which rule refused it (``privacy_level_not_offered``, ``video_too_long``).
    """

    retryable = False
    exit_code = 2

    def __init__(self, message: str, *, reason: str, **context: Any) -> None:
        super().__init__(message, reason=reason, **context)
        self.reason = reason

    def __reduce__(self) -> tuple[Any, ...]:  # Prefect pickles exceptions into task states
        return (_rebuild_refused, (self.message, self.reason, self.context))


def _rebuild_refused(message: str, reason: str, context: dict[str, Any]) -> PublishRefusedError:
    context = {k: v for k, v in context.items() if k != "reason"}
    return PublishRefusedError(message, reason=reason, **context)


def is_retryable(exc: BaseException | None) -> bool:
    """True when ``exc`` is a reelflow error that says a retry can succeed."""
    return isinstance(exc, ReelflowError) and exc.retryable


def retry_if_retryable(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect ``retry_condition_fn``: retry only errors flagged ``retryable``."""
    try:
        state.result()
    except Exception as exc:  # the state's exception is re-raised by result()
        # A run that lost its lease must stop: only a later run may try again.
        return is_retryable(exc) and not isinstance(exc, LeaseLostError)
    return False
