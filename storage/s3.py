"""S3 object store (``s3://bucket/prefix``), for AWS and S3-compatible servers (MinIO, moto).

Large objects go in through CreateMultipartUpload / UploadPart with a per-part checksum that the
server verifies on receipt, so a corrupted part is refused at the wire. An upload at a video's
final key (``videos/``) is a full-object CRC64NVME upload: completion carries the whole file's
CRC as the client read it, S3 refuses a mismatch, and HeadObject must then report that CRC over
what it holds, so the bytes are checked end to end without a second pass over them on the store.
Such an object is tagged ``reelflow-state=pending`` until it is recorded (:meth:`mark_stored`).
Other uploads (staged by older sessions, the gateway's) keep per-part SHA-256. botocore's
own retry handler covers 5xx, throttling and dropped connections; whatever still fails is
mapped here, once, to reelflow's typed errors.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from botocore.exceptions import BotoCoreError, ClientError

from reelflow.digests import part_crc64nvme_b64
from reelflow.errors import (
    ConfigurationError,
    IntegrityCheckError,
    ReelflowError,
    StorageError,
    TransientStorageError,
    UploadNotFoundError,
)
from reelflow.planning import S3_MIN_PART_BYTES, Chunk, is_final_video_key
from storage.base import PartReceipt, PendingUpload

HASH_BLOCK_BYTES = 4 * 1024 * 1024
TRANSIENT_CODES = {
    "InternalError",
    "ServiceUnavailable",
    "SlowDown",
    "RequestTimeout",
    "RequestTimeTooSkewed",
    "Throttling",
    "ThrottlingException",
}
STATE_TAG = "reelflow-state"  # pending (uploaded, not yet verified and recorded) | stored
PENDING_TAGGING = f"{STATE_TAG}=pending"


def make_s3_client(
    *, endpoint_url: str | None, max_pool_connections: int = 16, max_attempts: int = 5
) -> Any:
    """One boto3 client per run: standard retry mode (5xx, throttling, resets), pooled connections."""
    # Lazy: boto3 takes ~0.2 s to import and only an s3:// store or source needs a client.
    import boto3
    from botocore.config import Config

    config = Config(
        retries={"mode": "standard", "total_max_attempts": max_attempts},  # incl. the first
        max_pool_connections=max_pool_connections,
        s3={
            **({"addressing_style": "path"} if endpoint_url else {}),
            # Every part carries x-amz-checksum-sha256 or -crc64nvme, which is signed and which
            # the server verifies against the body, so SigV4 need not hash each body again (on
            # HTTPS botocore already skips it; on plain-HTTP endpoints such as a local MinIO it
            # would not).
            "payload_signing_enabled": False,
        },
        connect_timeout=10,
        read_timeout=120,
        # Part checksums are given explicitly (SHA-256 or CRC64NVME); botocore adds none.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    return boto3.client("s3", endpoint_url=endpoint_url, config=config)


def map_s3_error(exc: Exception, what: str, **context: Any) -> ReelflowError:
    """Turn any botocore failure into a reelflow StorageError leaf."""
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        code = str(err.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        if code == "NoSuchUpload":
            return UploadNotFoundError(f"{what}: the multipart upload no longer exists", **context)
        if code in ("BadDigest", "InvalidDigest", "InvalidPart", "InvalidPartOrder"):
            return IntegrityCheckError(f"{what}: {code}: {err.get('Message', '')}", **context)
        if code == "NoSuchBucket":
            return ConfigurationError(f"{what}: bucket does not exist", **context)
        if code in TRANSIENT_CODES or status >= 500 or status == 429:
            return TransientStorageError(f"{what}: {code or status}", http_status=status, **context)
        return StorageError(f"{what}: {code or status}: {err.get('Message', '')}", **context)
    if isinstance(exc, BotoCoreError):
        return TransientStorageError(f"{what}: {exc}", **context)
    return StorageError(f"{what}: {exc}", **context)


class S3Store:
    def __init__(self, url: str, client: Any, *, presign_ttl_s: int = 3600) -> None:
        parsed = urlparse(url)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise ConfigurationError(f"S3 store URL must be s3://bucket[/prefix], got {url!r}")
        self.url = url
        self.bucket = parsed.netloc
        self.prefix = parsed.path.strip("/")
        self.client = client
        self.presign_ttl_s = presign_ttl_s  # REELFLOW_PRESIGN_TTL_S: how long read_url works

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _call(self, what: str, fn: Any, **kwargs: Any) -> Any:
        try:
            return fn(**kwargs)
        except (ClientError, BotoCoreError) as exc:
            raise map_s3_error(exc, what) from exc

    def _on_object(self, what: str, fn: Any, key: str, **kwargs: Any) -> Any:
        """:meth:`_call` on the object ``key`` names (in this store's bucket, under its prefix)."""
        return self._call(what, fn, Bucket=self.bucket, Key=self._key(key), **kwargs)

    # --- multipart ----------------------------------------------------------------------------
    def create_upload(self, key: str, content_type: str) -> str:
        checksum: dict[str, str] = {"ChecksumAlgorithm": "SHA256"}
        if is_final_video_key(key):
            checksum = {
                "ChecksumAlgorithm": "CRC64NVME",
                "ChecksumType": "FULL_OBJECT",
                # The object appears at its final key on completion, before it is verified,
                # scanned and recorded: a public read must wait for reelflow-state=stored.
                "Tagging": PENDING_TAGGING,
            }
        resp = self._on_object(
            "CreateMultipartUpload",
            self.client.create_multipart_upload,
            key,
            ContentType=content_type,
            **checksum,
        )
        return str(resp["UploadId"])

    def upload_part(
        self, key: str, upload_id: str, chunk: Chunk, data: bytes | bytearray, sha256_b64: str
    ) -> PartReceipt:
        # An upload takes the one algorithm it was created with; the caller's SHA-256 of a
        # full-object part stays in the ledger (resume checks), the wire carries its CRC.
        crc = part_crc64nvme_b64(data) if is_final_video_key(key) else None
        checksum = {"ChecksumCRC64NVME": crc} if crc else {"ChecksumSHA256": sha256_b64}
        try:
            resp = self.client.upload_part(
                Bucket=self.bucket,
                Key=self._key(key),
                UploadId=upload_id,
                PartNumber=chunk.part_number,
                Body=data,
                ContentLength=len(data),
                **checksum,
            )
        except (ClientError, BotoCoreError) as exc:
            raise map_s3_error(exc, "UploadPart", part_number=chunk.part_number) from exc
        return PartReceipt(
            chunk.part_number,
            len(data),
            str(resp["ETag"]),
            resp.get("ChecksumSHA256", sha256_b64),
            resp.get("ChecksumCRC64NVME", crc),
        )

    def copy_part(
        self, key: str, upload_id: str, chunk: Chunk, src_key: str, src_offset: int
    ) -> PartReceipt:
        """UploadPartCopy of a byte range (CopySourceRange): S3 copies it, nothing is sent.
        The upload was created with SHA-256 checksums, so S3 computes the part's; servers
        that do not (moto) answer without one."""
        if chunk.length <= 0:
            raise StorageError(f"part {chunk.part_number}: a copied range cannot be empty")
        source: dict[str, Any] = {}
        # S3 takes CopySourceRange only from a source over 5 MB: a small source (a tiny last
        # partial) is copied whole, which is what the range would have said.
        if not (
            src_offset == 0
            and chunk.length <= S3_MIN_PART_BYTES
            and self.size(src_key) == chunk.length
        ):
            source["CopySourceRange"] = f"bytes={src_offset}-{src_offset + chunk.length - 1}"
        try:
            resp = self.client.upload_part_copy(
                Bucket=self.bucket,
                Key=self._key(key),
                UploadId=upload_id,
                PartNumber=chunk.part_number,
                CopySource={"Bucket": self.bucket, "Key": self._key(src_key)},
                **source,
            )
        except (ClientError, BotoCoreError) as exc:
            raise map_s3_error(exc, "UploadPartCopy", part_number=chunk.part_number) from exc
        result = resp["CopyPartResult"]
        checksum = result.get("ChecksumSHA256")
        return PartReceipt(
            chunk.part_number,
            chunk.length,
            str(result["ETag"]),
            str(checksum) if checksum else None,
        )

    def list_parts(self, key: str, upload_id: str) -> dict[int, PartReceipt]:
        out: dict[int, PartReceipt] = {}
        marker = 0
        while True:
            resp = self._on_object(
                "ListParts",
                self.client.list_parts,
                key,
                UploadId=upload_id,
                PartNumberMarker=marker,
            )
            for p in resp.get("Parts", []):
                n = int(p["PartNumber"])
                out[n] = PartReceipt(
                    n,
                    int(p["Size"]),
                    str(p["ETag"]),
                    p.get("ChecksumSHA256"),
                    p.get("ChecksumCRC64NVME"),
                )
            if not resp.get("IsTruncated"):
                return out
            marker = int(resp["NextPartNumberMarker"])

    def complete_upload(
        self,
        key: str,
        upload_id: str,
        parts: Sequence[PartReceipt],
        *,
        crc64nvme_b64: str | None = None,
    ) -> str | None:
        if is_final_video_key(key):
            self._complete_full_object(key, upload_id, parts, crc64nvme_b64)
            return None
        resp = self._on_object(
            "CompleteMultipartUpload",
            self.client.complete_multipart_upload,
            key,
            UploadId=upload_id,
            MultipartUpload={"Parts": _parts_body(parts, "ChecksumSHA256", "sha256_b64")},
        )
        # Real S3 answers with the composite here; servers that don't are covered by the
        # whole-file SHA-256 read back later (assemble-received, or the move of an older
        # staged session to its content key).
        checksum = resp.get("ChecksumSHA256")
        return str(checksum) if checksum else None

    def _complete_full_object(
        self, key: str, upload_id: str, parts: Sequence[PartReceipt], crc64nvme_b64: str | None
    ) -> None:
        """Complete against the client's whole-file CRC64NVME, then make the server say it holds
        exactly that: real S3 refuses a mismatching Complete itself (BadDigest); a server that
        accepts it anyway (moto does) is caught by HeadObject, which reports the CRC of the
        bytes it holds. Anything else deletes the object: unverified bytes are never kept."""
        if not crc64nvme_b64:
            raise IntegrityCheckError(f"{key}: no whole-file CRC64NVME to complete against")
        body = _parts_body(parts, "ChecksumCRC64NVME", "crc64nvme_b64")
        self._on_object(
            "CompleteMultipartUpload",
            self.client.complete_multipart_upload,
            key,
            UploadId=upload_id,
            MultipartUpload={"Parts": body},
            ChecksumType="FULL_OBJECT",
            ChecksumCRC64NVME=crc64nvme_b64,
        )
        head = self._on_object("HeadObject", self.client.head_object, key, ChecksumMode="ENABLED")
        kind, stored = head.get("ChecksumType"), head.get("ChecksumCRC64NVME")
        if kind != "FULL_OBJECT" or stored != crc64nvme_b64:
            self.delete(key)
            raise IntegrityCheckError(
                f"{key}: the store holds {kind} CRC64NVME {stored}, the source read"
                f" {crc64nvme_b64}; the object was deleted"
            )

    def mark_stored(self, key: str, sha256_hex: str) -> None:
        """PutObjectTagging (replaces the ``pending`` tag set): the object is verified and in
        the catalog, and carries its content SHA-256 where a reader of the bucket sees it."""
        self._on_object(
            "PutObjectTagging",
            self.client.put_object_tagging,
            key,
            Tagging={
                "TagSet": [
                    {"Key": STATE_TAG, "Value": "stored"},
                    {"Key": "sha256", "Value": sha256_hex},
                ]
            },
        )

    def _stored_checksum(self, key: str) -> str | None:
        """The SHA-256 checksum the server computed over what it stored (composite or full)."""
        head = self._on_object(
            "HeadObject",
            self.client.head_object,
            key,
            ChecksumMode="ENABLED",
        )
        value = head.get("ChecksumSHA256")
        return str(value) if value else None

    def abort_upload(self, key: str, upload_id: str) -> None:
        with contextlib.suppress(UploadNotFoundError):
            self._on_object(
                "AbortMultipartUpload",
                self.client.abort_multipart_upload,
                key,
                UploadId=upload_id,
            )

    def list_uploads(self, prefix: str = "") -> list[PendingUpload]:
        out: list[PendingUpload] = []
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self._key(prefix)}
        while True:
            resp = self._call("ListMultipartUploads", self.client.list_multipart_uploads, **kwargs)
            for u in resp.get("Uploads", []):
                key = str(u["Key"])
                if self.prefix:
                    key = key[len(self.prefix) + 1 :]
                out.append(PendingUpload(key, str(u["UploadId"]), u["Initiated"]))
            if not resp.get("IsTruncated"):
                return out
            kwargs["KeyMarker"] = resp.get("NextKeyMarker")
            kwargs["UploadIdMarker"] = resp.get("NextUploadIdMarker")

    # --- whole objects ------------------------------------------------------------------------
    def list_objects(self, prefix: str) -> list[tuple[str, datetime]]:
        out: list[tuple[str, datetime]] = []
        paginator = self.client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self._key(prefix)):
                for obj in page.get("Contents", []):
                    key = str(obj["Key"])
                    out.append(
                        (key[len(self.prefix) + 1 :] if self.prefix else key, obj["LastModified"])
                    )
        except Exception as exc:
            raise map_s3_error(exc, "ListObjectsV2") from exc
        return out

    def size(self, key: str) -> int | None:
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                return None
            raise map_s3_error(exc, "HeadObject") from exc
        except BotoCoreError as exc:
            raise map_s3_error(exc, "HeadObject") from exc
        return int(head["ContentLength"])

    def exists(self, key: str) -> bool:
        return self.size(key) is not None

    def put_file(self, key: str, path: Path, content_type: str) -> None:
        with path.open("rb") as fh:
            self.put_bytes(key, fh.read(), content_type)  # thumbnails and metadata only: small

    def put_bytes(self, key: str, data: bytes, content_type: str) -> None:
        self._on_object(
            "PutObject",
            self.client.put_object,
            key,
            Body=data,
            ContentType=content_type,
        )

    def move(self, src_key: str, dst_key: str) -> str | None:
        """Server-side copy (the bytes never come back through this process; CopyObject takes up
        to 5 GB, above reelflow's 4 GiB limit). Asking for a SHA-256 on the copy makes the server
        hash the whole object, so the return value is the stored object's full SHA-256 (base64)."""
        self._on_object(
            "CopyObject",
            self.client.copy_object,
            dst_key,
            CopySource={"Bucket": self.bucket, "Key": self._key(src_key)},
            MetadataDirective="COPY",
            ChecksumAlgorithm="SHA256",
        )
        full = self._stored_checksum(dst_key)
        self.delete(src_key)
        return full if full and "-" not in full else None

    def delete(self, key: str) -> None:
        self._on_object("DeleteObject", self.client.delete_object, key)

    def read_url(self, key: str) -> str:
        url: str = self.client.generate_presigned_url(
            "get_object",
            Params={"Bucket": self.bucket, "Key": self._key(key)},
            ExpiresIn=self.presign_ttl_s,
        )
        return url

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"

    def read_range(self, key: str, start: int, length: int) -> bytes:
        resp = self._on_object(
            "GetObject",
            self.client.get_object,
            key,
            Range=f"bytes={start}-{start + length - 1}",
        )
        data: bytes = resp["Body"].read()
        return data

    def sha256_hex(self, key: str) -> str:
        resp = self._on_object("GetObject", self.client.get_object, key)
        h = hashlib.sha256()
        for block in resp["Body"].iter_chunks(HASH_BLOCK_BYTES):
            h.update(block)
        return h.hexdigest()


def _parts_body(parts: Sequence[PartReceipt], field: str, attr: str) -> list[dict[str, Any]]:
    """CompleteMultipartUpload's part list, in order, each with the checksum ``field`` its
    receipt holds as ``attr`` (left out where the receipt has none)."""
    body = []
    for p in sorted(parts, key=lambda p: p.part_number):
        entry: dict[str, Any] = {"PartNumber": p.part_number, "ETag": p.etag}
        if checksum := getattr(p, attr):
            entry[field] = checksum
        body.append(entry)
    return body
