"""A PATCH's rules: ``Upload-Checksum``, the preconditions (content type, offset, a final
upload, the length), a deferred length declared late, and the HEAD and PATCH answers' headers.

Must not: do I/O (the writer, :mod:`storage.tus_writer`, streams the bytes).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from reelflow.tus.protocol import (
    BASE64,
    CHECKSUM_ALGORITHMS,
    CHECKSUM_MISMATCH_STATUS,
    OFFSET_CONTENT_TYPE,
    TusError,
    bad_request,
    check_size,
    http_date,
    non_negative,
    parse_offset,
    shown,
)

_DIGEST_BYTES = {name: hashlib.new(name).digest_size for name in CHECKSUM_ALGORITHMS}


@dataclass(frozen=True)
class Checksum:
    """A PATCH body's expected digest (``Upload-Checksum: <algorithm> <base64 digest>``)."""

    algorithm: str
    digest: bytes

    def hasher(self) -> Any:
        """A fresh hashlib object of the algorithm, to feed the body to."""
        # md5 here is an integrity check the client chose, not a security primitive.
        return hashlib.new(self.algorithm, usedforsecurity=False)

    def matches(self, digest: bytes) -> bool:
        """Whether the body's ``digest`` is the expected one (constant time)."""
        return hmac.compare_digest(self.digest, digest)

    def verify(self, digest: bytes) -> None:
        """460 (Checksum Mismatch) unless the body's ``digest`` is the expected one."""
        if not self.matches(digest):
            raise TusError(
                CHECKSUM_MISMATCH_STATUS,
                f"the body's {self.algorithm} does not match Upload-Checksum; "
                "the chunk was discarded",
                reason="checksum_mismatch",
            )

    def header(self) -> str:
        """This checksum as an ``Upload-Checksum`` value."""
        return f"{self.algorithm} {base64.b64encode(self.digest).decode()}"


def parse_checksum(header: str | None) -> Checksum | None:
    """``Upload-Checksum``: None when absent; 400 for an unknown algorithm or a digest that is
    not base64 of the algorithm's size."""
    if header is None:
        return None
    algorithm, _, encoded = header.strip().partition(" ")
    if algorithm not in CHECKSUM_ALGORITHMS:
        raise bad_request(
            f"Upload-Checksum algorithm {shown(algorithm)} is not supported "
            f"({', '.join(CHECKSUM_ALGORITHMS)})",
            "bad_checksum_algorithm",
        )
    encoded = encoded.strip()
    try:
        if BASE64.fullmatch(encoded) is None:
            raise ValueError(encoded)
        digest = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise bad_request("Upload-Checksum digest is not base64", "bad_checksum") from exc
    if len(digest) != _DIGEST_BYTES[algorithm]:
        raise bad_request(
            f"Upload-Checksum {algorithm} digest is {len(digest)} bytes, not "
            f"{_DIGEST_BYTES[algorithm]}",
            "bad_checksum",
        )
    return Checksum(algorithm, digest)


def _media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def creation_has_upload(content_type: str | None) -> bool:
    """Whether a creation POST carries the first bytes (creation-with-upload): its
    ``Content-Type`` is ``application/offset+octet-stream``."""
    return _media_type(content_type) == OFFSET_CONTENT_TYPE


def check_patch(
    *,
    state_offset: int,
    state_length: int | None,
    kind: str,
    content_type: str | None,
    offset_header: str | None,
    body_length: int | None = None,
) -> int:
    """A PATCH's preconditions, in tusd's order: 415 content type, 400 bad ``Upload-Offset``,
    403 on a final upload, 409 offset not the upload's (nothing changes), 400 a body
    (``Content-Length``, when known) past ``Upload-Length``. Returns the offset.

    ``state_length`` is the length after this PATCH (:func:`patch_length` first, for a
    deferred upload that declares it now)."""
    if _media_type(content_type) != OFFSET_CONTENT_TYPE:
        raise TusError(
            415,
            f"PATCH needs Content-Type: {OFFSET_CONTENT_TYPE}"
            + ("" if content_type is None else f", not {shown(content_type)}"),
            reason="bad_content_type",
        )
    offset = parse_offset(offset_header)
    if kind == "final":
        raise TusError(
            403,
            "a final upload (Upload-Concat: final) cannot be patched",
            reason="patch_on_final",
        )
    if offset != state_offset:
        raise TusError(
            409,
            f"Upload-Offset {offset} is not the upload's offset {state_offset}",
            reason="offset_mismatch",
            offset=offset,
            state_offset=state_offset,
        )
    if state_length is not None and body_length is not None:
        check_within_length(offset + body_length, state_length)
    return offset


def check_within_length(end: int, length: int) -> None:
    """400 when bytes would end at ``end``, past the upload's ``length`` (nothing of them may
    be stored: the writer calls this as the body streams, when Content-Length is unknown)."""
    if end > length:
        raise bad_request(
            f"the body ends at byte {end}, past Upload-Length {length}", "past_upload_length"
        )


def patch_length(
    header: str | None, *, state_length: int | None, state_offset: int, max_size: int
) -> int | None:
    """The upload's length after a PATCH that may carry ``Upload-Length`` (a deferred length
    is declared once; 400 to change it or to set it below the offset, 413 over the limit)."""
    if header is None:
        return state_length
    length = non_negative("Upload-Length", header)
    if state_length is not None:
        if length != state_length:
            raise bad_request(
                f"Upload-Length {length} cannot change the upload's length {state_length}",
                "bad_upload_length",
            )
        return state_length
    if length < state_offset:
        raise bad_request(
            f"Upload-Length {length} is below the bytes already received ({state_offset})",
            "bad_upload_length",
        )
    return check_size(length, max_size)


def head_headers(
    *,
    offset: int | None,
    length: int | None,
    metadata_header: str | None = None,
    concat_header: str | None = None,
    expires_at: datetime | None = None,
) -> dict[str, str]:
    """A HEAD answer's headers: ``Upload-Offset`` (None: a final upload whose concatenation
    is not done yet, which must not send one), ``Upload-Length`` or ``Upload-Defer-Length: 1``,
    the metadata and concat headers as given at creation, ``Upload-Expires``, and
    ``Cache-Control: no-store`` (a cached offset would make a client resume at the wrong byte)."""
    headers = {"Cache-Control": "no-store"}
    if offset is not None:
        headers["Upload-Offset"] = str(offset)
    if length is not None:
        headers["Upload-Length"] = str(length)
    elif concat_header is None or not concat_header.strip().startswith("final"):
        headers["Upload-Defer-Length"] = "1"
    if metadata_header:
        headers["Upload-Metadata"] = metadata_header
    if concat_header:
        headers["Upload-Concat"] = concat_header
    if expires_at is not None:
        headers["Upload-Expires"] = http_date(expires_at)
    return headers


def patch_headers(*, offset: int, expires_at: datetime | None) -> dict[str, str]:
    """A successful PATCH's headers (204): the new offset, and the expiry, which the
    expiration extension requires on every PATCH answer of an upload that expires."""
    headers = {"Upload-Offset": str(offset)}
    if expires_at is not None:
        headers["Upload-Expires"] = http_date(expires_at)
    return headers
