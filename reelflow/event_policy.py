"""What bucket events may do: which buckets and prefixes the bridge accepts, which keys are safe
to name, which TikTok accounts a bucket/prefix's sidecars may choose, and the check a run
started by an event applies to its own parameters.

Two callers, the same rules: the bridge (``deployments/s3_events/bridge.py``) refuses notifications
before it emits anything, and the ``ingest-video`` flow checks again when its ``origin`` says an
event started it, because anyone who can ``POST /api/events`` to the Prefect server can make
the trigger start a run with any payload. The flow trusts the event only as far as this policy
allows: an ``s3://`` source in ``REELFLOW_EVENT_BUCKETS``, a safe key, an account
``REELFLOW_EVENT_ACCOUNTS`` lets that bucket/prefix name.

Prefixes are folders: ``bucket/in`` covers ``in/clip.mp4``, never ``inbox/clip.mp4``.

Pure: plain strings in, plain data or typed errors out. Must not import boto3, prefect or the
settings, nor touch the network; callers pass the raw setting values.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from reelflow.errors import ConfigurationError, InputRejectedError

ORIGIN_S3_EVENT = "s3-event"  # fixed in prefect.yaml's trigger, never taken from the event
ORIGIN_GATEWAY = "gateway"  # fixed in the upload-received trigger, likewise
GATEWAY_SOURCE_PREFIX = "tus:"  # a gateway run's source: tus:<upload id>
KNOWN_ORIGINS = frozenset({ORIGIN_S3_EVENT, ORIGIN_GATEWAY})
BUCKETS_ENV = "REELFLOW_EVENT_BUCKETS"
ACCOUNTS_ENV = "REELFLOW_EVENT_ACCOUNTS"
ANY_ACCOUNT = "*"
MAX_KEY_BYTES = 1024  # S3's limit on a key's UTF-8 length
# S3's bucket naming rules (3-63 characters, lowercase letters, digits, dots, hyphens, starting
# and ending with a letter or digit), plus '_' which Ceph and older MinIO buckets may carry.
_BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]$")
# Characters that reorder or hide text: a key carrying them reads differently in logs and the UI.
_BIDI_CONTROLS = frozenset(
    "\u200e\u200f\u061c\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
)
_ACCOUNT_NAME = re.compile(r"^[^\s|;=,*]{1,255}$")
T = TypeVar("T")


# --- keys ----------------------------------------------------------------------------------


def _bad_char(ch: str) -> bool:
    # Cc: NUL, C0, DEL, C1. Cs: lone surrogates (JSON can carry them). Zl/Zp: line breaks.
    return unicodedata.category(ch) in ("Cc", "Cs", "Zl", "Zp") or ch in _BIDI_CONTROLS


def unsafe_key_reason(key: str) -> str | None:
    """Why ``key`` must never be ingested (NUL, control characters, ``.``/``..`` segments,
    too long), or None. A ``\\`` counts as a separator: a worker or a viewer may read it so."""
    if not key:
        return "empty key"
    if "\x00" in key:
        return "NUL in key"
    for ch in key:
        if _bad_char(ch):
            return f"control character U+{ord(ch):04X} in key"
    if len(key.encode("utf-8")) > MAX_KEY_BYTES:
        return f"key longer than {MAX_KEY_BYTES} bytes"
    if any(segment in (".", "..") for segment in re.split(r"[/\\]", key)):
        return "key has a '.' or '..' segment"
    return None


def printable(text: str) -> str:
    """``text`` with every unsafe character escaped (``\\x00``, ``\\u202e``): safe to log."""
    return "".join(f"\\u{ord(c):04x}" if _bad_char(c) else c for c in text)


# --- scopes --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scope:
    """A bucket, or a folder in it (``prefix`` is empty or ends with ``/``)."""

    bucket: str
    prefix: str = ""

    def covers(self, bucket: str, key: str) -> bool:
        return bucket == self.bucket and key.startswith(self.prefix)

    def __str__(self) -> str:
        return f"{self.bucket}/{self.prefix}" if self.prefix else self.bucket


def parse_scope(text: str, *, setting: str = BUCKETS_ENV) -> Scope:
    """``bucket`` or ``bucket/prefix`` -> :class:`Scope`; a bad one is a ConfigurationError."""
    bucket, _, prefix = text.strip().partition("/")
    if not _BUCKET_NAME.match(bucket) or ".." in bucket:
        raise ConfigurationError(f"{setting}: {printable(bucket)!r} is not an S3 bucket name")
    prefix = prefix.strip("/")
    if prefix:
        reason = unsafe_key_reason(prefix)
        if reason is not None:
            raise ConfigurationError(f"{setting}: prefix {printable(prefix)!r}: {reason}")
        prefix += "/"
    return Scope(bucket, prefix)


def parse_event_buckets(text: str) -> tuple[Scope, ...]:
    """REELFLOW_EVENT_BUCKETS (``bucket,bucket2/in``) -> scopes; empty text -> none."""
    return tuple(parse_scope(item) for item in text.split(",") if item.strip())


@dataclass(frozen=True)
class AccountRule:
    """The accounts sidecars under ``scope`` may name; ``accounts`` None means any."""

    scope: Scope
    accounts: frozenset[str] | None

    def allows(self, account: str) -> bool:
        return self.accounts is None or account in self.accounts


def parse_event_accounts(text: str) -> tuple[AccountRule, ...]:
    """REELFLOW_EVENT_ACCOUNTS (``bucket/prefix=acct1|acct2;bucket2=*``) -> rules."""
    rules = []
    seen: set[Scope] = set()
    for item in text.split(";"):
        if not item.strip():
            continue
        where, eq, names = item.partition("=")
        if not eq:
            raise ConfigurationError(
                f"{ACCOUNTS_ENV}: {printable(item.strip())!r} needs the form bucket/prefix=acct1|acct2"
            )
        scope = parse_scope(where, setting=ACCOUNTS_ENV)
        if scope in seen:
            raise ConfigurationError(f"{ACCOUNTS_ENV}: {scope} is listed twice")
        seen.add(scope)
        wanted = [n.strip() for n in names.split("|") if n.strip()]
        if wanted == [ANY_ACCOUNT]:
            rules.append(AccountRule(scope, None))
            continue
        for name in wanted:
            if not _ACCOUNT_NAME.match(name):
                raise ConfigurationError(
                    f"{ACCOUNTS_ENV}: {printable(name)!r} under {scope} is not an account name "
                    f"(use {ANY_ACCOUNT!r} alone for any account)"
                )
        rules.append(AccountRule(scope, frozenset(wanted)))
    return tuple(rules)


def _most_specific(
    items: Sequence[T], bucket: str, key: str, scope: Callable[[T], Scope]
) -> T | None:
    covering = [i for i in items if scope(i).covers(bucket, key)]
    return max(covering, key=lambda i: len(scope(i).prefix)) if covering else None


@dataclass(frozen=True)
class EventPolicy:
    """REELFLOW_EVENT_BUCKETS and REELFLOW_EVENT_ACCOUNTS, parsed."""

    buckets: tuple[Scope, ...] = ()
    accounts: tuple[AccountRule, ...] = ()

    @classmethod
    def parse(cls, event_buckets: str, event_accounts: str = "") -> EventPolicy:
        return cls(parse_event_buckets(event_buckets), parse_event_accounts(event_accounts))

    def scope_for(self, bucket: str, key: str) -> Scope | None:
        """The most specific listed scope holding ``bucket/key``, or None."""
        return _most_specific(self.buckets, bucket, key, lambda s: s)

    def refuses(self, bucket: str, key: str) -> str | None:
        """Why an object must not become a run (bucket/prefix not listed, unsafe key), or None."""
        reason = unsafe_key_reason(key)
        if reason is not None:
            return reason
        if self.scope_for(bucket, key) is None:
            listed = ", ".join(str(s) for s in self.buckets) or "nothing"
            return f"{bucket}/{key} is outside {BUCKETS_ENV} ({listed})"
        return None

    def account_refusal(self, bucket: str, key: str, account: str) -> str | None:
        """Why objects at ``bucket/key`` may not name ``account``, or None when they may."""
        rule = _most_specific(self.accounts, bucket, key, lambda r: r.scope)
        if rule is not None and rule.allows(account):
            return None
        where = f"under {rule.scope}" if rule is not None else f"for {bucket}/{key}"
        return (
            f"account {printable(account)!r} is not allowed {where} "
            f"(objects there may name: {_allowed_text(rule)}; set {ACCOUNTS_ENV})"
        )


def _allowed_text(rule: AccountRule | None) -> str:
    if rule is None or rule.accounts is not None and not rule.accounts:
        return "no account"
    if rule.accounts is None:
        return "any account"
    return ", ".join(sorted(rule.accounts))


# --- the flow's check ----------------------------------------------------------------------


def check_event_run(
    *,
    origin: str | None,
    source: str,
    account: str | None,
    event_buckets: str,
    event_accounts: str,
    source_secret: str | None = None,
    upload: str | None = None,
) -> None:
    """Refuse an ``ingest-video`` run an event started unless its parameters stay within policy.

    ``origin`` None or empty: a person started the run (CLI, UI, API) and this check does
    nothing. ``s3-event``: only an ``s3://`` source in REELFLOW_EVENT_BUCKETS with a safe key,
    and only an account REELFLOW_EVENT_ACCOUNTS allows there; never a ``source_secret`` (the
    source read would then not be the one checked). Refusals are ValidationErrors
    (terminal, nothing read or stored); a malformed setting is a ConfigurationError.
    ``gateway`` (an upload-received event): see :func:`check_gateway_run`.
    """
    if not origin:
        return
    if origin not in KNOWN_ORIGINS:
        raise InputRejectedError(
            f"unknown run origin {printable(origin)!r} (known: {', '.join(sorted(KNOWN_ORIGINS))})",
            reason="unknown_origin",
        )
    if origin == ORIGIN_GATEWAY:
        check_gateway_run(
            source=source, upload=upload, account=account, source_secret=source_secret
        )
        return
    if source_secret:
        raise InputRejectedError(
            "a run started by a bucket event reads its s3:// source as named; it takes no "
            "source_secret",
            reason="event_source_not_s3",
        )
    if not source.startswith("s3://"):
        # Not echoed: a path or URL may carry credentials, and says nothing the sender needs.
        raise InputRejectedError(
            f"a run started by a bucket event reads only s3:// sources in {BUCKETS_ENV}; "
            "this event named a local path or URL",
            reason="event_source_not_s3",
        )
    # Split as reelflow.sources does (not urlparse: keys may hold '#' and '?').
    bucket, _, key = source.removeprefix("s3://").partition("/")
    policy = EventPolicy.parse(event_buckets, event_accounts)
    refusal = policy.refuses(bucket, key)
    if refusal is not None:
        raise InputRejectedError(
            f"a run started by a bucket event refused s3://{printable(bucket)}/{printable(key)}: "
            f"{refusal}",
            reason="event_source_not_allowed",
        )
    if account:
        refusal = policy.account_refusal(bucket, key, account)
        if refusal is not None:
            raise InputRejectedError(
                f"a run started by a bucket event refused to publish: {refusal}",
                reason="event_account_not_allowed",
            )


def check_gateway_run(
    *, source: str, upload: str | None, account: str | None, source_secret: str | None
) -> None:
    """A run the upload-received event started names one gateway upload and nothing else:
    ``upload`` set, ``source`` exactly ``tus:<upload>``, no account and no source_secret (the
    upload's own validated metadata says where to publish). The flow then takes that upload only
    while it is ``received`` or ``processing`` (storage decides, not this pure check)."""
    if not upload or source != f"{GATEWAY_SOURCE_PREFIX}{upload}":
        raise InputRejectedError(
            "a run started by an upload-received event ingests one gateway upload: source "
            f"must be {GATEWAY_SOURCE_PREFIX}<upload> with the same upload parameter",
            reason="event_source_not_upload",
        )
    if account or source_secret:
        raise InputRejectedError(
            "a run started by an upload-received event takes its account and options from the "
            "upload's own metadata, never from the event",
            reason="event_options_not_allowed",
        )
