"""Catalog rows the ledger tests start from (a session of equal 10-byte parts)."""

from __future__ import annotations

from storage.catalog import UploadSession

PART_BYTES = 10


def upload_session(
    sid: str,
    parts: int,
    *,
    source_uri: str = "/x.mp4",
    fingerprint: str = "fp",
    staging_key: str | None = None,
) -> UploadSession:
    """An MP4 upload session ``sid`` of ``parts`` parts of 10 bytes, to ``file:///s``."""
    return UploadSession(
        id=sid,
        source_uri=source_uri,
        source_fingerprint=fingerprint,
        store_url="file:///s",
        staging_key=staging_key or f"staging/{sid}",
        size_bytes=parts * PART_BYTES,
        chunk_size=PART_BYTES,
        parts_total=parts,
        content_type="video/mp4",
        ext="mp4",
    )
