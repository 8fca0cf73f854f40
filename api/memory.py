"""Handing freed memory back to the operating system after a case.

A case allocates hundreds of megabytes in numpy arrays and frees them when it ends. glibc's allocator
keeps much of that in its heaps (its mmap threshold rises as large blocks are freed, so later arrays come
from the heaps, and each worker thread has an arena of its own); the process then sits at its peak long
after the load is gone, which is what a container's memory limit and the scheduler see. ``malloc_trim(0)``
returns the free pages of every arena; it costs milliseconds, runs in the thread pool after each case, and
does nothing where the C library has no such call (musl, macOS).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from functools import cache
from typing import Any

logger = logging.getLogger(__name__)


@cache
def _malloc_trim() -> Any:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None


def release_free_memory() -> bool:
    """Return the allocator's free pages to the system; False where the C library cannot."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
