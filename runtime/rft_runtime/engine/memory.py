"""Handing freed memory back to the system after the calls that allocate the most.

glibc keeps what a forward_backward frees (hundreds of MB of activations in pieces of every size) for its
own reuse, and the next call's pieces rarely fit the holes: the engine's resident memory crept up call by
call (1.46 GB after loading SmolLM2-135M, 1.9 GB after a few training steps). malloc_trim returns the free
pages (a few tens of ms); elsewhere than glibc this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_libc = None
if sys.platform.startswith("linux"):
    try:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        _libc.malloc_trim  # noqa: B018 - musl has no malloc_trim: fall back to nothing
    except (OSError, AttributeError):
        _libc = None


def release() -> None:
    """Return the allocator's free memory to the system (glibc); a no-op elsewhere."""
    if _libc is not None:
        _libc.malloc_trim(0)
