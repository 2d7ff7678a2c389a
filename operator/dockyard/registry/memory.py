"""Keep the server's memory flat in blob size.

glibc gives each thread that allocates its own malloc arena. The upload path hashes and
writes in worker threads, so large transfer buffers are freed into several arenas whose
pages are kept for reuse: the resident size then grows with the largest blobs moved. One
arena for the whole process keeps it level, and costs no throughput here: the event loop
and a few workers are all the threads there are. (A fixed mmap threshold flattens memory too,
but pays an mmap and page faults per buffer: it cost a third more CPU per GB pushed.)
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_ARENA_MAX = -8  # glibc's mallopt parameter number


def bound_allocator_caches() -> bool:
    """One malloc arena for the process; False where the C library is not glibc."""
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_ARENA_MAX, 1))
