"""S3 object sources: resolve ``s3://bucket/key`` to a pinned ``SourceRef`` and read ranges.

The pin is the ``VersionId`` on a versioned bucket (every GET reads that version, so an
overwrite cannot reach the run), else ``IfMatch`` on the ETag. boto3's errors are mapped to
reelflow's here and nowhere else in this package. The client is the caller's.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import urllib3
from botocore.exceptions import BotoCoreError, ClientError

from reelflow.errors import (
    InputRejectedError,
    SourceChangedError,
    SourceNotFoundError,
    TransientStorageError,
)
from reelflow.sources.ref import CONTENT_RANGE, READ_BLOCK_BYTES, SourceRef


def split_s3(uri: str) -> tuple[str, str]:
    # Not urlparse: S3 keys may contain '#' and '?', which a URL parser would cut off.
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return bucket, key


def resolve_s3(s3: Any, source: str) -> SourceRef:
    bucket, key = split_s3(source)
    try:
        head = s3.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        if code in ("404", "NoSuchKey", "NotFound", "NoSuchBucket") or status == 404:
            raise SourceNotFoundError(f"no such object: {source}") from exc
        if status == 403:
            raise InputRejectedError(f"access denied to {source}", reason="unreadable") from exc
        raise TransientStorageError(f"cannot read {source}: {code}") from exc
    except BotoCoreError as exc:
        raise TransientStorageError(f"cannot reach the source store: {exc}") from exc
    etag = str(head.get("ETag", ""))
    size = int(head["ContentLength"])
    version = head.get("VersionId")
    version = str(version) if version and version != "null" else None
    return SourceRef(
        uri=source,
        kind="s3",
        size_bytes=size,
        fingerprint=f"s3:{bucket}/{key}:{etag.strip(chr(34))}:{size}:{version or ''}",
        name=key.rsplit("/", 1)[-1],
        public_uri=source,
        etag=etag or None,
        version_id=version,
    )


def iter_s3(s3: Any, ref: SourceRef, start: int, length: int) -> Iterator[bytes]:
    bucket, key = split_s3(ref.uri)
    pin: dict[str, str] = (
        {"VersionId": ref.version_id}
        if ref.version_id
        else ({"IfMatch": ref.etag} if ref.etag else {})
    )
    try:
        resp = s3.get_object(
            Bucket=bucket, Key=key, Range=f"bytes={start}-{start + length - 1}", **pin
        )
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        if status in (404, 412) or code in ("PreconditionFailed", "NoSuchKey", "NoSuchVersion"):
            raise SourceChangedError(
                f"{ref.public_uri} changed or was removed since the run started ({code})"
            ) from exc
        raise TransientStorageError(f"reading {ref.public_uri} failed: {code}") from exc
    except BotoCoreError as exc:
        raise TransientStorageError(f"reading {ref.public_uri} failed: {exc}") from exc
    body = resp["Body"]
    try:
        got_etag = resp.get("ETag")
        m = CONTENT_RANGE.match(str(resp.get("ContentRange", "")).strip())
        if (ref.etag and got_etag and got_etag != ref.etag) or (
            m and int(m.group(3)) != ref.size_bytes
        ):
            raise SourceChangedError(f"{ref.public_uri} changed since the run started")
        yield from body.iter_chunks(READ_BLOCK_BYTES)
    except (ClientError, BotoCoreError, OSError, urllib3.exceptions.HTTPError) as exc:
        raise TransientStorageError(f"reading {ref.public_uri} failed: {exc}") from exc
    finally:
        body.close()
