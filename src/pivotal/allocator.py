"""Keep freed host memory in the process, so a step's large tensors do not page-fault every time.

glibc's malloc serves every allocation above its mmap threshold (128 KiB, raised dynamically up to
32 MiB) with a fresh `mmap` and returns it to the kernel on free. A policy update allocates and
frees (N, V) logit-sized tensors (hundreds of MB) several times per micro-batch, so each one
costs a page fault per 4 KiB page on first touch: on the 2-core development VM that was a quarter
of the update's time (benchmarks/train_profile.py; docs/results.md "The training phase").

`retain_freed_memory` sets glibc's thresholds (mallopt) so that such blocks come from the heap and
stay there after free, to be reused by the next step. This is the effect PyTorch's CPU tuning
guides get by preloading tcmalloc or jemalloc; mallopt needs no preload and no extra package. It
changes no value the program computes (only where memory comes from); the cost is that the
process keeps its peak heap instead of shrinking back after each step. Off with
`train.retain_freed_memory=false`; a no-op where the C library is not glibc (macOS, musl).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import platform

log = logging.getLogger(__name__)

# mallopt parameters (glibc malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_INT_MAX = 2**31 - 1

_applied = False


def retain_freed_memory() -> bool:
    """Serve large blocks from the heap and never trim it (process-wide, idempotent).

    Returns True when glibc took the settings, False where they do not apply or were refused.
    """
    global _applied
    if _applied:
        return True
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return False
    settings = {"M_MMAP_THRESHOLD": (_M_MMAP_THRESHOLD, 1 << 30),  # blocks under 1 GiB: heap
                "M_TRIM_THRESHOLD": (_M_TRIM_THRESHOLD, _INT_MAX),  # never give the top back
                "M_TOP_PAD": (_M_TOP_PAD, 256 << 20)}  # grow the heap 256 MiB at a time
    refused = [name for name, (param, value) in settings.items() if libc.mallopt(param, value) != 1]
    if refused:
        log.debug("glibc refused mallopt %s; freed memory goes back to the kernel", refused)
        return False
    _applied = True
    return True
