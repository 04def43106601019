"""Freed clip memory is kept: a batch of clip-sized arrays reuses the pages the last batch freed."""

import subprocess
import sys

BATCHES = """
import resource
import numpy as np
from datagen.host_memory import retain_freed_memory
assert retain_freed_memory()
from numpy._core.multiarray import _set_madvise_hugepage
assert _set_madvise_hugepage(False) is False  # NumPy asks for no huge pages
faults = []
for _ in range(3):  # three batches of 32 RGBX clips of 320x240, their crop windows written, then freed
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    clips = [np.empty((16, 240, 320, 4), np.uint8) for _ in range(32)]
    for clip in clips:
        clip[:, 20:200, 30:300] = 7
    del clips
    junk = [bytearray(1 << 16) for _ in range(64)]  # what else the process does between batches
    del junk
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(*faults)
"""


def test_a_batch_reuses_the_pages_the_last_one_freed():
    """In a process of its own, since the setting is process-wide. Without it glibc unmaps these blocks when
    they are freed, and the second batch faults in as many pages as the first (some 12,000)."""
    run = subprocess.run([sys.executable, "-c", BATCHES], capture_output=True, text=True, check=True)
    first, *later = (int(n) for n in run.stdout.split())
    assert first > 50, run.stdout  # some 12,000 pages of 4 KiB (fewer where the kernel gives huge pages)
    assert all(n < first / 20 for n in later), run.stdout
