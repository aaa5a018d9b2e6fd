"""What TikTok's Content Posting endpoints answer, as small dataclasses, and the tolerant
readers of their fields. Pure: no I/O. OAuth's ``TokenSet`` lives in :mod:`reelflow.tiktok.oauth`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import requests

from reelflow.tiktok.errors import TikTokPublishFailedError, malformed_response


@dataclass(frozen=True)
class CreatorInfo:
    """``creator_info/query`` data; ``privacy_level_options`` bounds a Direct Post's privacy."""

    creator_username: str
    creator_nickname: str
    creator_avatar_url: str
    privacy_level_options: tuple[str, ...]
    comment_disabled: bool
    duet_disabled: bool
    stitch_disabled: bool
    max_video_post_duration_sec: int | None


@dataclass(frozen=True)
class InitResult:
    """A new publish session. ``upload_url`` carries an upload token, so ``repr`` hides it."""

    publish_id: str
    upload_url: str = field(repr=False)


@dataclass(frozen=True)
class PublishStatus:
    """``status/fetch`` data. ``post_ids`` are strings: TikTok's int64 ids exceed 2**53."""

    publish_id: str
    status: str
    fail_reason: str | None
    uploaded_bytes: int | None
    post_ids: list[str]
    downloaded_bytes: int | None = None
    log_id: str | None = None

    def failure(self) -> TikTokPublishFailedError | None:
        """The typed error for a FAILED status (terminal unless ``internal``), else None."""
        if self.status != "FAILED":
            return None
        return TikTokPublishFailedError(self.fail_reason or "", self.publish_id, self.log_id)


@dataclass(frozen=True)
class PutResult:
    """A chunk PUT TikTok accepted: 206 (more to come) or 201 (every byte received)."""

    http_status: int
    acknowledged_last_byte: int | None  # from the reply's Content-Range, read as inclusive

    @property
    def complete(self) -> bool:
        return self.http_status == 201


def json_object(resp: requests.Response, *, endpoint: str) -> dict[str, Any]:
    # error_from_response already turned unparseable 2xx bodies into errors; this is the rest.
    try:
        body = json.loads(resp.content)
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise malformed_response(resp, endpoint=endpoint, detail="a JSON object")
    return body


def int_or_none(value: Any) -> int | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


def post_ids(raw: Any) -> list[str]:
    """Post ids as decimal strings; floats are refused, since they may already have lost digits."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raw = [raw]
    ids = []
    for item in raw:
        if isinstance(item, int) and not isinstance(item, bool):
            ids.append(str(item))
        elif isinstance(item, str) and item.strip().isdigit():
            ids.append(item.strip())
        else:
            raise ValueError(f"post id {item!r} is not an integer")
    return ids
