"""Credentials in a source URL: split off at the entry point, revealed only where the read needs them.

A URL such as ``https://user:pw@host/clip.mp4?token=abc`` has a *public* form,
``https://host/clip.mp4?token=REDACTED`` (userinfo removed, every query value and the fragment
replaced), which is what becomes the flow parameter ``source``, the run name, log lines, catalog
rows and CLI output. The real URL travels under a *reference* (the flow parameter
``source_secret``):

* ``process:<random>``: the CLI sealed the URL in this process's vault (:func:`seal`); the flow
  it runs in the same process reveals it. Nothing leaves the process.
* any other value names a Prefect ``Secret`` block holding the whole URL (deployment runs; see
  README "Secrets"). The worker loads it when the run starts.

Every secret part of a revealed URL is handed to the one redactor
(:func:`reelflow.logging.remember_secret`), so an error or log line that quotes it is masked.
This module never logs and never puts the real URL in an exception message.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit, urlunsplit

from reelflow.errors import ConfigurationError, InputRejectedError
from reelflow.logging import redact_text, remember_secret

PUBLIC_VALUE = "REDACTED"
PROCESS_PREFIX = "process:"
_SCHEMES = ("http", "https")

_vault: dict[str, str] = {}
_vault_lock = threading.Lock()


@dataclass(frozen=True)
class SealedSource:
    """``public`` is safe to persist and print; ``ref`` (or None) finds the real URL."""

    public: str
    ref: str | None


MALFORMED_URL = "(malformed URL)"


def _parts(source: str) -> tuple[str, str, str, str, str] | None:
    try:
        parts = urlsplit(source)
    except ValueError:
        # Not parseable, so nothing can say where a credential in it ends: show none of it.
        if source.lower().startswith(("http:", "https:")):
            return ("", MALFORMED_URL, "", "", "")
        return None
    if parts.scheme.lower() not in _SCHEMES:
        return None
    return parts.scheme, parts.netloc, parts.path, parts.query, parts.fragment


def public_url(source: str) -> str:
    """``source`` with userinfo removed and every query value and the fragment replaced.

    Anything that is not an http(s) URL (paths, ``s3://`` keys) is returned unchanged: it has no
    place for a credential.
    """
    parts = _parts(source)
    if parts is None:
        return source
    scheme, netloc, path, query, fragment = parts
    if netloc == MALFORMED_URL:
        return MALFORMED_URL
    host = netloc.rpartition("@")[2]
    pairs = parse_qsl(query, keep_blank_values=True) if query else []
    public_query = "&".join(f"{quote(k, safe='-_.~')}={PUBLIC_VALUE}" for k, _ in pairs)
    if query and not pairs:  # a bare ?token with no '=': the whole query may be the secret
        public_query = PUBLIC_VALUE
    return urlunsplit((scheme, host, path, public_query, PUBLIC_VALUE if fragment else ""))


def has_credentials(source: str) -> bool:
    """True when ``source`` is an http(s) URL whose public form differs from it, or whose text
    the redactor would change (a credential in the path, say)."""
    return public_url(source) != source or redact_text(source) != source


def _remember_parts(url: str) -> None:
    parts = urlsplit(url)
    remember_secret(parts.username)
    remember_secret(parts.password)
    for _, value in parse_qsl(parts.query, keep_blank_values=True):
        remember_secret(value)
    if parts.query and "=" not in parts.query:
        remember_secret(parts.query)
    remember_secret(parts.fragment)


def seal(source: str) -> SealedSource:
    """Split ``source`` into its public form and, when it carries credentials, a process-vault
    reference that :func:`reveal` turns back into the real URL in this process only."""
    public = public_url(source)
    if public == source:
        return SealedSource(public=source, ref=None)
    _remember_parts(source)
    ref = PROCESS_PREFIX + secrets.token_urlsafe(18)
    with _vault_lock:
        _vault[ref] = source
    return SealedSource(public=public, ref=ref)


def forget(ref: str | None) -> None:
    """Drop a process-vault entry (the run is over)."""
    if ref:
        with _vault_lock:
            _vault.pop(ref, None)


@contextmanager
def sealed(source: str) -> Iterator[SealedSource]:
    """:func:`seal` for the duration of a block (the CLI's in-process run)."""
    result = seal(source)
    try:
        yield result
    finally:
        forget(result.ref)


def _load_secret_block(name: str) -> str:
    # Lazy: prefect is slow to import, and the CLI loads this module before every command.
    from prefect.blocks.system import Secret

    try:
        block: Any = Secret.load(name)  # sync in a sync context (flows here are sync)
    except ValueError as exc:  # Prefect's "Unable to find block document named ..."
        raise ConfigurationError(
            f"no Prefect Secret block named {name!r} (see README: Secrets)"
        ) from exc
    value = block.get()
    if not isinstance(value, str):
        raise ConfigurationError(f"the Secret block {name!r} must hold the source URL as a string")
    return value


def reveal(source: str, ref: str | None) -> str:
    """The real URL for the flow parameters (``source``, ``source_secret``).

    Without a reference, ``source`` must not carry credentials: a run whose parameters hold them
    has already leaked them, and is refused so that it stores and prints nothing more.
    """
    if not ref:
        if has_credentials(source):
            raise InputRejectedError(
                f"the source URL {public_url(source)} carries credentials; seal them "
                "(`reelflow ingest` does) or put the URL in a Prefect Secret block and pass "
                "its name as source_secret (README: Secrets)",
                reason="credentials_in_source",
            )
        return source
    if ref.startswith(PROCESS_PREFIX):
        with _vault_lock:
            real = _vault.get(ref)
        if real is None:
            raise ConfigurationError(
                "source_secret refers to a process vault entry that is not in this process; "
                "deployment runs must name a Prefect Secret block",
            )
    else:
        real = _load_secret_block(ref)
        _remember_parts(real)
    if public_url(real) != source:
        raise InputRejectedError(
            f"source {source} is not the public form of the URL in source_secret "
            f"({public_url(real)})",
            reason="source_secret_mismatch",
        )
    return real
