"""Keep the server's memory flat in blob size, and its transfer buffers out of the page-fault path.

glibc gives each thread that allocates its own malloc arena. The upload path hashes and
writes in worker threads, so large transfer buffers are freed into several arenas whose
pages are kept for reuse: the resident size then grows with the largest blobs moved. One
arena for the whole process keeps it level, and costs no throughput here: the event loop
and a few workers are all the threads there are.

Transfer buffers (socket reads of 256 KiB, 1 MiB batches and file pieces) are above glibc's
initial mmap threshold, and freeing one can shrink the heap: each would then be new memory,
page-faulted in and zeroed by the kernel (about 340 page faults per 1 MiB push, measured).
A fixed mmap threshold above those sizes and a trim threshold that keeps some free memory at
the top of the heap let them reuse the same pages. A low fixed threshold (128 KiB) does the
opposite: an mmap and page faults per buffer, a third more CPU per GB pushed.
"""

from __future__ import annotations

import ctypes
import ctypes.util

# glibc's mallopt parameter numbers
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
MMAP_THRESHOLD = 8 * 1024 * 1024  # larger allocations get pages of their own (rare: whole-file reads)
TRIM_THRESHOLD = 8 * 1024 * 1024  # free memory kept at the top of the heap before it is returned


def bound_allocator_caches() -> bool:
    """One malloc arena for the process, transfer buffers reused; False where the C library is not glibc."""
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return False
    return all([mallopt(M_ARENA_MAX, 1), mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD),
                mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)])
