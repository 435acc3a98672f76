"""Keep a worker's Data-In buffers in resident memory (glibc's malloc).

A fast-path READ allocates its Data-In buffer (``bytearray(n)``, up to ``MAX_TRANSFER_BYTES``)
and frees it once the socket took it. With glibc's defaults the freed memory at the top of
the heap is given back (``brk``) as soon as more than the trim threshold is free there, and
the next buffer faults every page in again: measured on a worker serving 1 MiB reads at QD 8,
one page fault per 4 KiB of every read (about 250 per command, half the worker's CPU). The
threshold is dynamic (twice the largest ``mmap``-ed chunk freed so far), so how often it
happens depends on what the process freed first. ``keep_buffers()`` fixes both thresholds:
every buffer up to ``MAX_TRANSFER_BYTES`` comes from the heap (``M_MMAP_THRESHOLD``) and up to
``KEPT_FREE_BYTES`` of freed heap stays resident for the next one (``M_TRIM_THRESHOLD``).
A C library without ``mallopt`` (not glibc) keeps its own behaviour.
"""

from __future__ import annotations

import ctypes
import logging

from vmblock.scsi.lu import MAX_TRANSFER_BYTES

log = logging.getLogger(__name__)

# glibc <malloc.h>
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# every transfer's buffer from the heap (a chunk of exactly the threshold is still mmap-ed)
MMAP_THRESHOLD_BYTES = 2 * MAX_TRANSFER_BYTES
# freed heap kept resident: four maximum transfers (a QD 8 of 1 MiB reads fits four times)
KEPT_FREE_BYTES = 4 * MAX_TRANSFER_BYTES


def keep_buffers() -> None:
    """Fix this process's malloc thresholds (module docstring); once per process."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except AttributeError:
        return
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    for param, value in ((M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES),
                         (M_TRIM_THRESHOLD, KEPT_FREE_BYTES)):
        if mallopt(param, value) != 1:
            log.warning("mallopt(%d, %d) refused", param, value)
