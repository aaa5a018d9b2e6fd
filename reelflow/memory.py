"""Keep chunk buffers from piling up in glibc's heap: memory stays flat with file size.

A chunk is one large ``bytes`` (8-64 MiB). glibc serves allocations above its mmap threshold
with ``mmap`` and returns them to the OS on free, but the threshold is *dynamic*: after the first
such buffer is freed it rises to that size (up to 32 MiB), and later chunks then come from the
per-thread arenas, which keep up to twice the threshold each after a free. With a dozen upload
threads that retention grew RSS with the file's size (measured: +18 MiB from a 106 MiB to a
1085 MiB ingest). Fixing the threshold at 1 MiB turns the dynamic adjustment off, so every chunk
buffer is mapped and unmapped on its own.

Must not: fail anywhere glibc is absent (musl, macOS): it is then a no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_MMAP_THRESHOLD = -3  # <malloc.h>
MMAP_THRESHOLD_BYTES = 1024 * 1024

_pinned = False


def pin_mmap_threshold() -> bool:
    """Set glibc's M_MMAP_THRESHOLD once per process; True if it is (now or already) set."""
    global _pinned
    if _pinned:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    _pinned = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
    return _pinned
