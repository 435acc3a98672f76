"""Keep the Data-In buffers of a process that serves I/O in resident memory (glibc's malloc).

A READ allocates its Data-In buffer (``bytearray(n)``, up to the largest transfer: the SCSI
core's ``MAX_TRANSFER_BYTES``) and frees it once the socket took it, in the server and in a
worker's fast path alike. With glibc's defaults the freed memory at the top of
the heap is given back (``brk``) as soon as more than the trim threshold is free there, and
the next buffer faults every page in again: measured on a worker serving 1 MiB reads at QD 8,
one page fault per 4 KiB of every read (about 250 per command, half the worker's CPU; 93 per
command in the one-process server). The
threshold is dynamic (twice the largest ``mmap``-ed chunk freed so far), so how often it
happens depends on what the process freed first. ``keep_buffers(largest)`` fixes both
thresholds: every buffer up to ``largest`` comes from the heap (``M_MMAP_THRESHOLD``) and up
to four of them stay resident, freed, for the next ones (``M_TRIM_THRESHOLD``).
A C library without ``mallopt`` (not glibc) keeps its own behaviour.
"""

from __future__ import annotations

import ctypes
import logging

log = logging.getLogger(__name__)

# glibc <malloc.h>
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# every transfer's buffer from the heap (a chunk of exactly the threshold is still mmap-ed)
MMAP_THRESHOLD_TRANSFERS = 2
# freed heap kept resident: four largest transfers (a QD 8 of 1 MiB reads fits four times)
KEPT_FREE_TRANSFERS = 4


def keep_buffers(largest: int) -> None:
    """Fix this process's malloc thresholds for transfers of up to ``largest`` bytes
    (module docstring); once per process, before it serves."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except AttributeError:
        return
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    for param, value in ((M_MMAP_THRESHOLD, MMAP_THRESHOLD_TRANSFERS * largest),
                         (M_TRIM_THRESHOLD, KEPT_FREE_TRANSFERS * largest)):
        if mallopt(param, value) != 1:
            log.warning("mallopt(%d, %d) refused", param, value)
