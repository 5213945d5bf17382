"""Process-wide settings that the command line applies before any work starts.

glibc's malloc hands every block above 128 KiB (a threshold that only creeps up to 32 MiB)
straight back to the operating system when it is freed, and trims the heap as soon as its
free top passes a few hundred KiB. A training or inference step frees and re-allocates the same
multi-megabyte activation, gradient and scratch buffers every time, so each step pays thousands
of page faults and the kernel zeroes every page again: 10-20 % of a step on a 2-core CPU.
Keeping freed memory inside the process, as jemalloc and tcmalloc do, removes that cost; memory
is not returned between steps, and peak memory grows a little (2-13 % in our measurements).

``RESNETLAB_MALLOC_TUNING=0`` turns it off. Other C libraries and systems are left alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import sys

# mallopt() parameter numbers from glibc's <malloc.h>.
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 1 << 30  # blocks below 1 GiB come from the heap and are reused
TRIM_THRESHOLD = 2**31 - 1  # mallopt takes an int: the largest free top kept is 2 GiB
TOP_PAD = 256 << 20  # the heap grows in large steps (address space only until touched)


@functools.lru_cache(maxsize=1)
def tune_allocator() -> bool:
    """Make glibc keep freed memory for reuse; returns True when the setting took effect."""
    if os.environ.get("RESNETLAB_MALLOC_TUNING", "1").strip().lower() in ("0", "false", "no"):
        return False
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # only glibc understands these parameters  # noqa: B018
    except (OSError, AttributeError):
        return False
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    settings = (
        (M_MMAP_THRESHOLD, MMAP_THRESHOLD),
        (M_TRIM_THRESHOLD, TRIM_THRESHOLD),
        (M_TOP_PAD, TOP_PAD),
    )
    return all([bool(libc.mallopt(param, value)) for param, value in settings])
