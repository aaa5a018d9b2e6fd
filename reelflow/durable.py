"""Durability on the local filesystem: fsync a file, or a directory after a rename into it.

Must not: decide where files go or how they are named (the stores and the sample writer do).
"""

from __future__ import annotations

import os
from pathlib import Path


def fsync_path(path: Path) -> None:
    """Flush ``path`` (a file, or a directory so that a rename into it survives a crash)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
