"""Pure checks of what a caller asks for: upload sizing, publish options, account names, times.

Every entry point (the CLI, ``ingest_video`` / ``publish_media`` called from Python, the Prefect
UI form, an S3 event) runs these same rules *before* anything starts: no Prefect run, no read of
the source, no TikTok call. A refusal is a :class:`~reelflow.errors.InputRejectedError` whose
``reason`` names the rule and whose message says the numbers (exit 2, one line, no retries).

Must not: do I/O, read settings or the clock (defaults, the budget and ``now`` are arguments),
or import prefect, boto3, requests or sqlmodel.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from reelflow.errors import InputRejectedError
from reelflow.planning import S3_MAX_PART_BYTES, upload_buffer_bytes

# The post options' rules have one home, reelflow.publish_rules; they are part of every
# request checked here, so they stay importable from this module too.
from reelflow.publish_rules import DEFAULT_PRIVACY as DEFAULT_PRIVACY
from reelflow.publish_rules import DISCLOSURES, INTERACTIONS
from reelflow.publish_rules import MAX_CAPTION_UTF16_UNITS as MAX_CAPTION_UTF16_UNITS
from reelflow.publish_rules import MODES as MODES
from reelflow.publish_rules import POST_OPTION_KEYS as POST_OPTION_KEYS
from reelflow.publish_rules import PRIVACY_LEVELS as PRIVACY_LEVELS
from reelflow.publish_rules import PostOptions as PostOptions
from reelflow.publish_rules import PublishRequest as PublishRequest
from reelflow.publish_rules import check_caption as check_caption
from reelflow.publish_rules import check_mode as check_mode
from reelflow.publish_rules import check_post_options as check_post_options
from reelflow.publish_rules import check_privacy as check_privacy
from reelflow.publish_rules import parse_flag as parse_flag
from reelflow.publish_rules import post_options_from as post_options_from
from reelflow.publish_rules import utf16_units as utf16_units
from reelflow.settings import Settings

MAX_UPLOAD_CONCURRENCY = 64  # the flow's task-runner threads; more buys nothing but memory
MAX_CHUNK_BYTES = S3_MAX_PART_BYTES  # 5 GiB: S3's largest part (and more than any source)
INGEST_MODES = (*MODES, "none")  # ingest may also only store
# A publish_at this far in the past still means "now": the clock of whoever filled the form and
# the time from the CLI to the flow's start; anything older is refused, not posted at once.
PUBLISH_AT_PAST_GRACE = timedelta(minutes=5)
# Local names given with `reelflow accounts add`: they appear in tags, logs and file names.
ACCOUNT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}")


def _size(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(n) >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def _whole_number(
    value: int, highest: int, *, what: str, reason: str, unit: str = "", why: str = ""
) -> int:
    """``value`` if it is a whole number from 1 to ``highest``; a bool (an int to Python) is
    refused like any other non-number."""
    if isinstance(value, bool) or not isinstance(value, int):
        of_unit = f" of {unit}" if unit else ""
        raise InputRejectedError(
            f"{what} must be a whole number{of_unit}, not {value!r}", reason=reason
        )
    if not 1 <= value <= highest:
        units = f" {unit}" if unit else ""
        because = f" ({why})" if why else ""
        raise InputRejectedError(
            f"{what} {value}{units} is outside 1..{highest}{because}", reason=reason
        )
    return value


def check_chunk_size(chunk_size_bytes: int) -> int:
    """A part size in bytes: 1 byte to 5 GiB (small sizes are raised to S3's 5 MiB later)."""
    return _whole_number(
        chunk_size_bytes,
        MAX_CHUNK_BYTES,
        what="chunk size",
        unit="bytes",
        why=f"at most {_size(MAX_CHUNK_BYTES)}, S3's largest part",
        reason="invalid_chunk_size",
    )


def check_concurrency(concurrency: int) -> int:
    """UploadPart requests at once: 1 to :data:`MAX_UPLOAD_CONCURRENCY`."""
    return _whole_number(
        concurrency, MAX_UPLOAD_CONCURRENCY, what="concurrency", reason="invalid_concurrency"
    )


def check_memory_budget(chunk_size_bytes: int, concurrency: int, budget_bytes: int) -> int:
    """The run's upload buffers (chunk × (concurrency + 1)) must fit ``budget_bytes``.

    Returns the bytes the buffers take.
    """
    need = upload_buffer_bytes(chunk_size_bytes, concurrency)
    if need > budget_bytes:
        raise InputRejectedError(
            f"chunk size {_size(chunk_size_bytes)} x (concurrency {concurrency} + 1) needs "
            f"{_size(need)} ({need} bytes) of upload buffers, over the memory budget of "
            f"{_size(budget_bytes)} ({budget_bytes} bytes, REELFLOW_MEMORY_BUDGET_BYTES); "
            "use a smaller chunk size or concurrency",
            reason="over_memory_budget",
            needed_bytes=need,
            budget_bytes=budget_bytes,
        )
    return need


def check_account_name(name: str) -> str:
    """A local account name: a letter or digit, then letters, digits, ``. _ @ + -``; ≤ 64."""
    if not isinstance(name, str) or ACCOUNT_NAME.fullmatch(name) is None:
        shown = name if isinstance(name, str) and name.isprintable() else ascii(name)
        raise InputRejectedError(
            f"account name {shown!r} is not valid: 1-64 characters, letters, digits and "
            "'._@+-', starting with a letter or digit",
            reason="invalid_account_name",
        )
    return name


def post_options_from_text(values: Mapping[str, str | None]) -> PostOptions:
    """The post options of a tus upload's metadata (the keys of
    :data:`POST_OPTION_KEYS`, values "true"/"false"; empty or absent = not set).

    An unset ``disable_*`` follows the creator's setting; an unset disclosure is false.
    """
    flags = {key: parse_flag(key, values.get(key)) for key in POST_OPTION_KEYS}
    return post_options_from(
        {**{key: flags[key] for key in INTERACTIONS}, **{k: bool(flags[k]) for k in DISCLOSURES}}
    )


def post_options_text(post: PostOptions) -> dict[str, str | None]:
    """The inverse of :func:`post_options_from_text`, as upload metadata records them."""
    out: dict[str, str | None] = {}
    for key in POST_OPTION_KEYS:
        value = getattr(post, key)
        out[key] = None if value is None else ("true" if value else "false")
    return out


def check_publish_at(publish_at: datetime | None, now: datetime) -> datetime | None:
    """A time with a timezone, not in the past (beyond :data:`PUBLISH_AT_PAST_GRACE`)."""
    if publish_at is None:
        return None
    if publish_at.tzinfo is None or publish_at.utcoffset() is None:
        raise InputRejectedError(
            f"publish_at {publish_at.isoformat()} needs a timezone "
            "(e.g. 2026-12-01T18:00:00+00:00)",
            reason="naive_publish_at",
        )
    if publish_at < now - PUBLISH_AT_PAST_GRACE:
        raise InputRejectedError(
            f"publish_at {publish_at.isoformat()} is in the past (now "
            f"{now.isoformat(timespec='seconds')}); leave it out to publish now",
            reason="publish_at_in_past",
        )
    return publish_at


def check_publish_request(
    account: str,
    mode: str,
    privacy: str | None,
    caption: str | None,
    *,
    again: bool = False,
    post: PostOptions | None = None,
) -> PublishRequest:
    """What `reelflow publish` / ``publish_media`` accept (``mode`` direct or inbox); ``post``:
    the interaction and disclosure options (:func:`check_post_options`)."""
    check_account_name(account)
    check_mode(mode)
    check_privacy(privacy)
    check_caption(caption)
    privacy_level = (privacy or DEFAULT_PRIVACY) if mode == "direct" else None
    options = check_post_options(post or PostOptions(), mode=mode, privacy_level=privacy_level)
    return PublishRequest(
        account=account,
        mode=mode,
        privacy=privacy_level,
        caption=caption,
        again=again,
        post=options if mode == "direct" else PostOptions(),
    )


@dataclass(frozen=True)
class IngestOptions:
    """Checked ingest options, defaults applied; ``publish`` is None when nothing is posted."""

    chunk_size_bytes: int
    concurrency: int
    buffer_bytes: int
    mode: str  # direct | inbox | none
    publish: PublishRequest | None
    publish_at: datetime | None


def check_ingest_options(
    *,
    chunk_size_bytes: int | None,
    concurrency: int | None,
    account: str | None,
    caption: str | None,
    privacy: str | None,
    mode: str | None,
    publish_at: datetime | None,
    default_chunk_size_bytes: int,
    default_concurrency: int,
    memory_budget_bytes: int,
    now: datetime,
    post: PostOptions | None = None,
) -> IngestOptions:
    """Every rule an ingest request must pass before anything starts (all callers)."""
    chunk = check_chunk_size(
        default_chunk_size_bytes if chunk_size_bytes is None else chunk_size_bytes
    )
    parallel = check_concurrency(default_concurrency if concurrency is None else concurrency)
    buffers = check_memory_budget(chunk, parallel, memory_budget_bytes)
    check_privacy(privacy)
    check_caption(caption)
    if account is not None:
        check_account_name(account)
    publish_mode = check_mode(mode or ("direct" if account else "none"), INGEST_MODES)
    if publish_mode != "none" and not account:
        raise InputRejectedError(
            f"mode {publish_mode!r} needs an account (--account)", reason="no_account"
        )
    if publish_at is not None and publish_mode == "none":
        raise InputRejectedError(
            "publish_at needs an account to publish to (--account)", reason="no_account"
        )
    if publish_mode == "none" and post is not None and post.asked:
        raise InputRejectedError(
            f"{', '.join(post.asked)} need an account to publish to (--account)",
            reason="no_account",
        )
    request = None
    if publish_mode != "none" and account:
        request = check_publish_request(account, publish_mode, privacy, caption, post=post)
    return IngestOptions(
        chunk_size_bytes=chunk,
        concurrency=parallel,
        buffer_bytes=buffers,
        mode=publish_mode,
        publish=request,
        publish_at=check_publish_at(publish_at, now),
    )


def check_ingest_request(
    settings: Settings,
    chunk_size_bytes: int | None,
    concurrency: int | None,
    account: str | None,
    caption: str | None,
    privacy: str | None,
    mode: str | None,
    publish_at: datetime | None,
    *,
    now: datetime | None = None,
    post: PostOptions | None = None,
) -> IngestOptions:
    """An ingest request's option values (the CLI's, the flow's parameters, a gateway upload's
    metadata), with the settings' defaults and memory budget, checked against
    :func:`check_ingest_options` at ``now`` (None: the clock now); ``post`` the post options."""
    return check_ingest_options(
        chunk_size_bytes=chunk_size_bytes,
        concurrency=concurrency,
        account=account,
        caption=caption,
        privacy=privacy,
        mode=mode,
        publish_at=publish_at,
        default_chunk_size_bytes=settings.chunk_size_bytes,
        default_concurrency=settings.upload_concurrency,
        memory_budget_bytes=settings.memory_budget_bytes,
        now=datetime.now(UTC) if now is None else now,
        post=post,
    )
