"""Keeping freed memory while the engine works, and handing it back to the system when it rests.

glibc keeps what a forward_backward frees (hundreds of MB of activations in pieces of every size) for its
own reuse, and the next call's pieces rarely fit the holes: the engine's resident memory crept up call by
call (1.46 GB after loading SmolLM2-135M, 1.9 GB after a few training steps). malloc_trim returns the free
pages (a few tens of ms), which the engine's compute loop does once it has been idle for a second
(service.IDLE_RELEASE_S) and after each batch of sampling.

While it works, every page handed back is a page fault when the next call touches it again: by default glibc
serves each piece of 32 MB or more (a [350, 49152] block of logits) with its own mmap, unmapped when freed, and
gives the top of the heap back as soon as 128 kB of it is free. SmolLM2-135M's 932-token forward_backward
took 90,000 page faults and 0.2 s of system time that way (4% of its CPU time). keep_freed() makes the
engine process take everything from the heap and keep it until a release: 14 page faults, the same peak.
Elsewhere than glibc both do nothing.
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


# mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4


def keep_freed() -> None:
    """Serve every allocation from the heap and keep freed memory until release() (see the module docstring).
    For the engine process, whose compute loop releases when idle."""
    if _libc is not None:
        _libc.mallopt(M_MMAP_MAX, 0)
        _libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1)


def release() -> None:
    """Return the allocator's free memory to the system (glibc); a no-op elsewhere."""
    if _libc is not None:
        _libc.malloc_trim(0)
