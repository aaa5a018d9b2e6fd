"""``Upload-Concat`` (the concatenation extension): a partial upload, or a final one made of
partials named by their URLs.

Must not: do I/O (the gateway's handlers check the partials themselves).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

from reelflow.tus.protocol import UPLOAD_ID, HeaderMap, bad_request, header_value, shown

MAX_CONCAT_UPLOADS = 1000  # tus-js-client's parallelUploads sends a handful
_CONCAT_PATH = re.compile(r"(?:.*/)?uploads/(?P<id>[^/]+)/?")


@dataclass(frozen=True)
class Concat:
    """``Upload-Concat``: a ``partial`` upload, or a ``final`` one made of ``ids`` in order."""

    kind: Literal["partial", "final"]
    ids: tuple[str, ...] = ()


def _concat_id(url: str) -> str:
    try:
        path = urlsplit(url).path
    except ValueError as exc:
        raise bad_request(f"Upload-Concat URL {shown(url)} is not a URL", "bad_concat") from exc
    found = _CONCAT_PATH.fullmatch(path)
    if found is None or UPLOAD_ID.fullmatch(found["id"]) is None:
        raise bad_request(
            f"Upload-Concat URL {shown(url)} is not an upload of this server", "bad_concat"
        )
    return found["id"]


def parse_concat(header: str | None) -> Concat | None:
    """``Upload-Concat``: None when absent; ``partial``; or ``final;<url> <url>...`` where each
    URL is ``/uploads/{id}`` or an absolute URL ending so (400 otherwise, or for a repeat)."""
    if header is None:
        return None
    value = header.strip()
    if value == "partial":
        return Concat("partial")
    kind, sep, urls = value.partition(";")
    if kind.strip() != "final" or not sep:
        raise bad_request(
            f"Upload-Concat must be 'partial' or 'final;<urls>', not {shown(header)}", "bad_concat"
        )
    ids = tuple(_concat_id(url) for url in urls.split())
    if not ids:
        raise bad_request("Upload-Concat final lists no partial uploads", "bad_concat")
    if len(ids) > MAX_CONCAT_UPLOADS:
        raise bad_request(
            f"Upload-Concat final lists over {MAX_CONCAT_UPLOADS} uploads", "bad_concat"
        )
    # Each partial is consumed by the final upload it is part of; twice makes no sense.
    if len(set(ids)) != len(ids):
        raise bad_request("Upload-Concat final lists an upload twice", "bad_concat")
    return Concat("final", ids)


def check_final_creation(headers: HeaderMap | Mapping[str, str]) -> None:
    """A final concatenation takes its length from its partials: 400 if it sends one."""
    if header_value(headers, "Upload-Length") is not None or (
        header_value(headers, "Upload-Defer-Length") is not None
    ):
        raise bad_request(
            "a final upload (Upload-Concat: final) must not send Upload-Length or "
            "Upload-Defer-Length",
            "bad_upload_length",
        )
