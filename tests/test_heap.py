"""vmblock.heap: with the thresholds fixed, freed Data-In buffers stay resident, so the next
ones fault no page in; with glibc's defaults the same pattern (a queue of 1 MiB buffers, all
freed) gives the heap top back and faults every page in again."""

from __future__ import annotations

import ctypes
import subprocess
import sys

import pytest

PATTERN = """
import resource, sys
from vmblock.heap import keep_buffers
if sys.argv[1] == "keep":
    keep_buffers(8 << 20)
def queue_of_reads():
    bufs = [bytearray(1 << 20) for _ in range(8)]     # a QD 8 of 1 MiB reads
    del bufs
queue_of_reads()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(50):
    queue_of_reads()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", PATTERN, mode], check=True,
                         capture_output=True, text=True).stdout
    return int(out)


@pytest.mark.skipif(not hasattr(ctypes.CDLL(None), "mallopt"), reason="needs glibc's mallopt")
def test_kept_buffers_fault_no_page_in_again():
    pages = 50 * 8 * (1 << 20) // 4096
    assert faults("default") > pages // 2     # the pattern really gives the memory back
    assert faults("keep") < pages // 100
