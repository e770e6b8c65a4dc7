"""Host memory of the learner's process: keep what a learner update frees for the next one (glibc ``mallopt``).

Why: PyTorch allocates CPU tensors with the C library's ``malloc``. A learner update allocates and frees the same
few megabytes every time (activations, gradients, the compiled graph's buffers), and glibc's defaults hand much of it
back to the operating system at each free: blocks from 128 KiB up are ``mmap``-ed and unmapped (the threshold adapts
up to the largest block freed so far), and the heap's free top is trimmed once it exceeds twice that threshold. The
next update then takes the same pages back as *fresh* pages, one page fault and one zero-fill per 4 KiB page. On the
CartPole benchmark's learner (batch 256, K = 5, 601-atom heads, ``bf16-mixed`` + ``torch_compile_learner``,
``benchmarks/learner_speed.py``) that is ~1,700 page faults and 3-4 ms of system time per ~20 ms update. With the two
thresholds set here there are none, and updates/s rise by 20-30 % (docs/benchmarks.md, "Learner speed", session 13).

What: ``mallopt(M_MMAP_THRESHOLD, 32 MiB)`` (blocks under 32 MiB come from the heap; glibc accepts no more, its
``DEFAULT_MMAP_THRESHOLD_MAX`` on 64-bit) and ``mallopt(M_TRIM_THRESHOLD, 1 GiB)`` (the heap's free top is kept up to
1 GiB). These are the settings glibc documents for this case (``mallopt(3)``: "the dynamic mmap threshold ...
``M_TRIM_THRESHOLD``"); PyTorch's CPU performance guide recommends an allocator that keeps freed memory (jemalloc,
tcmalloc) for the same reason, which needs ``LD_PRELOAD`` before the process starts; this needs nothing installed.

Cost: the process keeps the memory it has freed (at most its peak heap) instead of returning it between updates,
as a caching allocator does. The replay buffer's arrays, larger than 32 MiB, are still mapped and returned as before.
It is process-wide state, so it is an option (``keep_freed_host_memory``, default True) applied once by the process
that runs the learner (``MuZero.setup``), and a no-op where the C library is not glibc (macOS, musl, Windows).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import platform

logger = logging.getLogger(__name__)

# mallopt parameters (glibc <malloc.h>).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's DEFAULT_MMAP_THRESHOLD_MAX on 64-bit; mallopt refuses a larger one
TRIM_THRESHOLD = 1024 * 1024 * 1024


def keep_freed_host_memory() -> bool:
    """Sets glibc's mmap and trim thresholds (module docstring) for this whole process.

    Returns:
        True when glibc accepted both settings; False where the C library is not glibc (nothing changed) or refused
        one (logged; a refused setting keeps its old value).
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        logger.info("keep_freed_host_memory: the C library is not glibc here (%s); malloc is left as it is",
                    platform.platform())
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    mallopt = libc.mallopt
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    if not mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD):  # refused settings leave the old value: nothing to undo
        logger.warning("keep_freed_host_memory: glibc refused M_MMAP_THRESHOLD=%d; malloc is left as it is",
                       MMAP_THRESHOLD)
        return False
    if not mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD):
        logger.warning("keep_freed_host_memory: glibc refused M_TRIM_THRESHOLD=%d", TRIM_THRESHOLD)
        return False
    return True
