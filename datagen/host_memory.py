"""Host memory of the hot path: what a batch frees is kept for the next one, in pages already mapped.

A replica decodes every clip into an array of several MB (PyAV, `video/decode/pyav.py`), rescales it through torch's
buffers and renders every batch into another array. glibc's malloc hands such blocks back to the kernel
when they are freed (a block above its mmap threshold is unmapped; a free heap top above its trim
threshold is trimmed), and NumPy asks for huge pages on arrays of 4 MB and more, which the kernel zeroes
and compacts on first touch. So whenever anything else ran between two batches (the gRPC server, the
trainer, a benchmark's other pipelines), the next batch faulted its memory in again: some 200 page faults
per clip, a tenth of a clip's time on a CPU core of this project's VMs (docs/performance.md). Kept in the
heap, in small pages, the next batch reuses the same pages. The resident size then stays at its peak, the
batches in flight, which a replica holds anyway.
"""

from __future__ import annotations

import ctypes
import functools
import importlib
import logging

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (malloc.h)
MMAP_THRESHOLD_MAX = 32 << 20  # glibc's ceiling on 64-bit hosts: larger blocks are mapped whatever is asked
NEVER_TRIM = 2**31 - 1  # mallopt takes an int


@functools.cache
def retain_freed_memory() -> bool:
    """Have malloc serve blocks up to 32 MiB from its heap and never trim it, and NumPy not ask for huge pages;
    process-wide, once. False where the C library is not glibc (malloc is left as it is there)."""
    _no_numpy_huge_pages()
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    if mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX) != 1 or mallopt(M_TRIM_THRESHOLD, NEVER_TRIM) != 1:
        log.warning("malloc refused the settings that keep freed clip memory: batches fault their pages in anew")
        return False
    return True


def _no_numpy_huge_pages() -> None:
    """NumPy's switch (NUMPY_MADVISE_HUGEPAGE=0 before its import does the same); private, so only if found."""
    for module in ("numpy._core.multiarray", "numpy.core.multiarray"):  # NumPy 2, NumPy 1
        try:
            switch = getattr(importlib.import_module(module), "_set_madvise_hugepage", None)
        except ImportError:
            continue
        if switch is not None:
            switch(False)
        return
