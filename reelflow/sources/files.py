"""Local file sources: resolve a path to a pinned ``SourceRef`` and read it back.

A file is pinned by (device, inode, size, mtime) and opened with ``O_NOFOLLOW`` (a swapped-in
symlink is not followed) and ``O_NONBLOCK`` (``open()`` of a FIFO never waits for a writer);
non-regular files are refused after a ``stat``, which never blocks. A changed file is
``SourceChangedError``. The read deadline is the reader's job, not this module's.
"""

from __future__ import annotations

import io
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from reelflow.errors import InputRejectedError, SourceChangedError, SourceNotFoundError
from reelflow.sources.ref import READ_BLOCK_BYTES, SourceRef

_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC


def file_id(st: os.stat_result) -> tuple[int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _file_type(mode: int) -> str:
    for test, name in (
        (stat.S_ISFIFO, "FIFO (named pipe)"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
    ):
        if test(mode):
            return name
    return "special file"


def resolve_file(source: str) -> SourceRef:
    path = Path(source).expanduser()
    try:
        st = os.stat(path)  # stat first: it never blocks, whatever the file is
    except (FileNotFoundError, NotADirectoryError) as exc:
        raise SourceNotFoundError(f"no such file: {path}") from exc
    except OSError as exc:
        raise InputRejectedError(
            f"cannot read {path}: {exc.strerror}", reason="unreadable"
        ) from exc
    if stat.S_ISDIR(st.st_mode):
        raise InputRejectedError(f"{path} is a directory, not a video file", reason="unreadable")
    if not stat.S_ISREG(st.st_mode):
        raise InputRejectedError(
            f"{path} is a {_file_type(st.st_mode)}, not a regular file",
            reason="not_regular_file",
        )
    real = path.resolve()
    try:
        fd = os.open(real, _OPEN_FLAGS)
    except OSError as exc:
        raise InputRejectedError(
            f"cannot read {path}: {exc.strerror}", reason="unreadable"
        ) from exc
    try:
        opened = os.fstat(fd)
    finally:
        os.close(fd)
    if not stat.S_ISREG(opened.st_mode):  # swapped between stat and open
        raise InputRejectedError(
            f"{path} is a {_file_type(opened.st_mode)}, not a regular file",
            reason="not_regular_file",
        )
    return SourceRef(
        uri=str(real),
        kind="file",
        size_bytes=opened.st_size,
        fingerprint=f"file:{real}:{opened.st_size}:{opened.st_mtime_ns}",
        name=real.name,
        public_uri=str(real),
        file_id=file_id(opened),
    )


def open_pinned(ref: SourceRef) -> io.BufferedReader:
    """Open the resolved file without blocking or following a swapped-in symlink, and only
    if it is still the same regular file (device, inode, size, mtime)."""
    try:
        fd = os.open(ref.uri, _OPEN_FLAGS)
    except FileNotFoundError as exc:
        raise SourceChangedError(f"{ref.public_uri} was removed during the run") from exc
    except OSError as exc:
        raise SourceChangedError(f"{ref.public_uri} was replaced: {exc.strerror}") from exc
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or file_id(st) != ref.file_id:
        os.close(fd)
        raise SourceChangedError(f"{ref.public_uri} changed since the run started")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def check_unchanged(ref: SourceRef, fh: io.BufferedReader) -> None:
    if file_id(os.fstat(fh.fileno())) != ref.file_id:
        raise SourceChangedError(f"{ref.public_uri} was modified while being read")


def iter_file(ref: SourceRef, start: int, length: int) -> Iterator[bytes]:
    with open_pinned(ref) as fh:
        fh.seek(start)
        remaining = length
        while remaining > 0:
            block = fh.read(min(READ_BLOCK_BYTES * 8, remaining))
            if not block:
                return
            remaining -= len(block)
            yield block
