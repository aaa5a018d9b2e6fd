"""Local-filesystem object store (``file:///abs/dir``), the embedded default.

A staged upload is one preallocated file that each part is written into at its own offset
(``os.pwrite``), plus a tiny marker per part recording size and SHA-256: the marker is the
local equivalent of S3's ListParts. Completion is fsync + atomic rename, so the final key
either holds the whole verified file or does not exist; it is idempotent: a run killed between
the rename and the removal of the upload's directory is completed by the next call.

Upload ids are this store's own (24 hex digits) and are checked before any path is built from
one: an id from a tampered catalog (``../../outside``) never reaches the filesystem.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import json
import os
import re
import secrets
import shutil
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlparse

from reelflow.durable import fsync_path
from reelflow.errors import IntegrityCheckError, StorageError, UploadNotFoundError
from reelflow.planning import Chunk, composite_sha256
from storage.base import PartReceipt, PendingUpload

UPLOADS_DIR = ".uploads"
HASH_BLOCK_BYTES = 4 * 1024 * 1024
UPLOAD_ID_BYTES = 12
_UPLOAD_ID = re.compile(rf"[0-9a-f]{{{2 * UPLOAD_ID_BYTES}}}")


def valid_upload_id(upload_id: object) -> bool:
    return isinstance(upload_id, str) and _UPLOAD_ID.fullmatch(upload_id) is not None


class LocalStore:
    def __init__(self, url: str) -> None:
        parsed = urlparse(url)
        if parsed.scheme != "file" or not parsed.path.startswith("/"):
            raise StorageError(f"local store URL must be file:///absolute/dir, got {url!r}")
        self.url = url
        self.root = Path(parsed.path)
        self.root.mkdir(parents=True, exist_ok=True)

    # --- helpers ------------------------------------------------------------------------------
    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root.resolve() not in path.parents:
            raise StorageError(f"key escapes the store: {key!r}")
        return path

    def _upload_dir(self, upload_id: str) -> Path:
        if not valid_upload_id(upload_id):
            raise UploadNotFoundError(
                f"not an upload id of this store: {upload_id!r}", reason="invalid_upload_id"
            )
        return self.root / UPLOADS_DIR / upload_id

    def _require(self, upload_id: str, key: str | None = None) -> Path:
        d = self._upload_dir(upload_id)
        try:
            meta = json.loads((d / "meta.json").read_text())
        except (OSError, ValueError) as exc:
            raise UploadNotFoundError(f"no such upload: {upload_id}", upload_id=upload_id) from exc
        if key is not None and meta.get("key") != key:  # S3 answers NoSuchUpload too
            raise UploadNotFoundError(f"upload {upload_id} is not for {key!r}", upload_id=upload_id)
        return d

    @staticmethod
    def _write_atomic(path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with tmp.open("wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)

    # --- multipart ----------------------------------------------------------------------------
    def create_upload(self, key: str, content_type: str) -> str:
        self._path(key)  # refuse a key outside the store before anything is written
        upload_id = secrets.token_hex(UPLOAD_ID_BYTES)  # opaque, server-assigned like S3's
        d = self._upload_dir(upload_id)
        (d / "parts").mkdir(parents=True)
        (d / "data").touch()
        meta = {
            "key": key,
            "content_type": content_type,
            "initiated": datetime.now(UTC).isoformat(),
        }
        self._write_atomic(d / "meta.json", json.dumps(meta).encode())
        return upload_id

    def upload_part(
        self, key: str, upload_id: str, chunk: Chunk, data: bytes | bytearray, sha256_b64: str
    ) -> PartReceipt:
        d = self._require(upload_id, key)
        digest = base64.b64encode(hashlib.sha256(data).digest()).decode()
        if digest != sha256_b64:  # what S3 answers with BadDigest
            raise IntegrityCheckError(
                f"part {chunk.part_number}: checksum mismatch", part_number=chunk.part_number
            )
        try:
            fd = os.open(d / "data", os.O_WRONLY)
        except FileNotFoundError as exc:  # completed (renamed away) or aborted meanwhile
            raise UploadNotFoundError(f"no such upload: {upload_id}", upload_id=upload_id) from exc
        try:
            written = os.pwrite(fd, data, chunk.offset)
            os.fsync(fd)
        except OSError as exc:
            raise StorageError(f"part {chunk.part_number}: write failed: {exc.strerror}") from exc
        finally:
            os.close(fd)
        if written != len(data):
            raise StorageError(f"short write on part {chunk.part_number}")
        receipt = PartReceipt(chunk.part_number, len(data), f'"{digest}"', digest)
        marker = {
            "size": receipt.size,
            "etag": receipt.etag,
            "sha256": digest,
            "offset": chunk.offset,
        }
        self._write_atomic(
            d / "parts" / f"{chunk.part_number:05d}.json", json.dumps(marker).encode()
        )
        return receipt

    def copy_part(
        self, key: str, upload_id: str, chunk: Chunk, src_key: str, src_offset: int
    ) -> PartReceipt:
        """The range of ``src_key`` written into the staged file at ``chunk.offset`` by the
        kernel (``os.copy_file_range``: no byte through Python; a reflink or an in-kernel copy
        on filesystems that offer them), then fsynced. Like S3's UploadPartCopy the copy is not
        hashed here: the receipt's SHA-256 is None and its ETag names the copy."""
        d = self._require(upload_id, key)
        src = self._path(src_key)
        try:
            held = src.stat().st_size
        except FileNotFoundError as exc:
            raise StorageError(f"part {chunk.part_number}: no object {src_key!r}") from exc
        if chunk.length <= 0 or src_offset < 0 or src_offset + chunk.length > held:
            raise StorageError(
                f"part {chunk.part_number}: range {src_offset}+{chunk.length} is outside "
                f"{src_key!r} ({held} bytes)"
            )
        try:
            fd = os.open(d / "data", os.O_WRONLY)
        except FileNotFoundError as exc:  # completed (renamed away) or aborted meanwhile
            raise UploadNotFoundError(f"no such upload: {upload_id}", upload_id=upload_id) from exc
        try:
            with src.open("rb") as fh:
                _copy_range(fh.fileno(), fd, src_offset, chunk.offset, chunk.length)
            os.fsync(fd)
        except OSError as exc:
            raise StorageError(f"part {chunk.part_number}: copy failed: {exc.strerror}") from exc
        finally:
            os.close(fd)
        etag = f'"copy-{secrets.token_hex(8)}"'
        marker = {"size": chunk.length, "etag": etag, "sha256": None, "offset": chunk.offset}
        self._write_atomic(
            d / "parts" / f"{chunk.part_number:05d}.json", json.dumps(marker).encode()
        )
        return PartReceipt(chunk.part_number, chunk.length, etag, None)

    def list_parts(self, key: str, upload_id: str) -> dict[int, PartReceipt]:
        d = self._require(upload_id, key)
        out: dict[int, PartReceipt] = {}
        for marker in sorted((d / "parts").glob("*.json")):
            m = json.loads(marker.read_text())
            n = int(marker.stem)
            out[n] = PartReceipt(n, int(m["size"]), m["etag"], m["sha256"])
        return out

    def complete_upload(
        self,
        key: str,
        upload_id: str,
        parts: Sequence[PartReceipt],
        *,
        crc64nvme_b64: str | None = None,
    ) -> str | None:
        """fsync, rename to ``key``, drop the upload's directory. Idempotent: when a previous
        call was killed after the rename, the file already at ``key`` (of the parts' total
        size) is the completed upload, and only the bookkeeping is left to finish.

        ``crc64nvme_b64`` is not checked here: the filesystem keeps no checksum, and the
        caller reads the file back (REELFLOW_VERIFY_READBACK, on by default for this store)."""
        d = self._require(upload_id, key)
        data, dest = d / "data", self._path(key)
        expected = sum(p.size for p in parts)
        try:
            if data.exists():
                held = data.stat().st_size
                if held != expected:
                    raise IntegrityCheckError(
                        f"staged file holds {held} bytes, parts add up to {expected}"
                    )
                fsync_path(data)
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.replace(data, dest)
            elif not dest.is_file() or dest.stat().st_size != expected:
                raise IntegrityCheckError(
                    f"upload {upload_id} holds no data and {key!r} is not its completed file"
                )
            fsync_path(dest.parent)
        except OSError as exc:
            raise StorageError(f"completing upload {upload_id} failed: {exc.strerror}") from exc
        shutil.rmtree(d, ignore_errors=True)
        return composite_sha256([base64.b64decode(p.sha256_b64 or "") for p in parts])

    def abort_upload(self, key: str, upload_id: str) -> None:
        shutil.rmtree(self._upload_dir(upload_id), ignore_errors=True)

    def list_uploads(self, prefix: str = "") -> list[PendingUpload]:
        out = []
        for meta_path in (self.root / UPLOADS_DIR).glob("*/meta.json"):
            if not valid_upload_id(meta_path.parent.name):
                continue  # not ours: never handed out as an id to abort
            try:
                m = json.loads(meta_path.read_text())
            except (OSError, ValueError):
                continue
            if m["key"].startswith(prefix):
                out.append(
                    PendingUpload(
                        m["key"], meta_path.parent.name, datetime.fromisoformat(m["initiated"])
                    )
                )
        return out

    # --- whole objects ------------------------------------------------------------------------
    def list_objects(self, prefix: str) -> list[tuple[str, datetime]]:
        base = self.root.resolve()
        out = []
        for path in (base / prefix).rglob("*") if (base / prefix).exists() else []:
            if path.is_file():
                mtime = datetime.fromtimestamp(path.stat().st_mtime, UTC)
                out.append((str(path.relative_to(base)), mtime))
        return out

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def size(self, key: str) -> int | None:
        p = self._path(key)
        return p.stat().st_size if p.is_file() else None

    def put_file(self, key: str, path: Path, content_type: str) -> None:
        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
        shutil.copyfile(path, tmp)
        fsync_path(tmp)
        os.replace(tmp, dest)

    def put_bytes(self, key: str, data: bytes, content_type: str) -> None:
        self._write_atomic(self._path(key), data)

    def _prune(self, path: Path) -> None:
        """Remove directories a key left empty (staging/<session>/), never the root."""
        root = self.root.resolve()
        parent = path.parent
        while parent != root and root in parent.parents:
            try:
                parent.rmdir()
            except OSError:
                return
            parent = parent.parent

    def mark_stored(self, key: str, sha256_hex: str) -> None:
        """Nothing to do: a file has no tags, and this store is never read publicly (the
        catalog holds the SHA-256)."""

    def move(self, src_key: str, dst_key: str) -> str | None:
        """Atomic rename; returns None (no checksum without reading the file again)."""
        src, dst = self._path(src_key), self._path(dst_key)
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, dst)
        fsync_path(dst.parent)
        self._prune(src)
        return None

    def delete(self, key: str) -> None:
        path = self._path(key)
        path.unlink(missing_ok=True)
        self._prune(path)

    def read_url(self, key: str) -> str:
        return str(self._path(key))

    def uri(self, key: str) -> str:
        return self._path(key).as_uri()

    def read_range(self, key: str, start: int, length: int) -> bytes:
        with self._path(key).open("rb") as fh:
            fh.seek(start)
            return fh.read(length)

    def sha256_hex(self, key: str) -> str:
        h = hashlib.sha256()
        with self._path(key).open("rb") as fh:
            while block := fh.read(HASH_BLOCK_BYTES):
                h.update(block)
        return h.hexdigest()


def _copy_range(src_fd: int, dst_fd: int, src_offset: int, dst_offset: int, length: int) -> None:
    """``length`` bytes from ``src_fd`` at ``src_offset`` to ``dst_fd`` at ``dst_offset``, by
    the kernel. Where ``copy_file_range`` is refused (across filesystems on old kernels, or a
    filesystem without it) it falls back to block reads and ``pwrite``: a byte pass through
    Python, but still no second upload."""
    done = 0
    try:
        while done < length:
            n = os.copy_file_range(
                src_fd, dst_fd, length - done, src_offset + done, dst_offset + done
            )
            if n == 0:
                raise OSError(errno.EIO, "source ended early")
            done += n
        return
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
            raise
    while done < length:
        block = os.pread(src_fd, min(HASH_BLOCK_BYTES, length - done), src_offset + done)
        if not block:
            raise OSError(errno.EIO, "source ended early")
        os.pwrite(dst_fd, block, dst_offset + done)
        done += len(block)
