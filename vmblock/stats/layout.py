"""The columns of one stats row, the command kinds and the latency histogram's buckets.

A stats row is one int64 vector of ``WIDTH`` items: counters (``COUNTERS``), then a
histogram of read latencies and one of write latencies (``BUCKETS`` buckets each). Times are
microseconds. The histogram is log-linear: ``SUB`` buckets per power of two (HdrHistogram's
idea with 2 significant bits), so a percentile read from it is within 25% of the true value
from 1 us to 2^31 us (~36 min); bucket ``b`` holds [``bucket_low(b)``, ``bucket_low(b+1)``).

Commands are counted by kind, from the CDB's operation code (SBC-4 / SPC-4 numbers):
read, write, flush (SYNCHRONIZE CACHE), unmap (UNMAP, WRITE SAME), compare-and-write,
xcopy (EXTENDED COPY) and other (INQUIRY, TEST UNIT READY, ...).
"""

from __future__ import annotations

import numpy as np

from vmblock.scsi.constants import Opcode

# command kinds
READ, WRITE, FLUSH, UNMAP, COMPARE_WRITE, XCOPY, OTHER = range(7)
KIND_NAMES = ("read", "write", "flush", "unmap", "compare_write", "xcopy", "other")
EXTENDED_COPY = 0x83        # SPC-4 6.4 (EXTENDED COPY, LID1)

_KINDS = {
    READ: (Opcode.READ_6, Opcode.READ_10, Opcode.READ_12, Opcode.READ_16),
    WRITE: (Opcode.WRITE_6, Opcode.WRITE_10, Opcode.WRITE_12, Opcode.WRITE_16,
            Opcode.WRITE_AND_VERIFY_10, Opcode.WRITE_AND_VERIFY_12, Opcode.WRITE_AND_VERIFY_16,
            Opcode.ORWRITE_16),
    FLUSH: (Opcode.SYNCHRONIZE_CACHE_10, Opcode.SYNCHRONIZE_CACHE_16),
    UNMAP: (Opcode.UNMAP, Opcode.WRITE_SAME_10, Opcode.WRITE_SAME_16),
    COMPARE_WRITE: (Opcode.COMPARE_AND_WRITE,),
    XCOPY: (EXTENDED_COPY,),
}


def _kind_table() -> bytes:
    table = bytearray([OTHER]) * 256
    for kind, opcodes in _KINDS.items():
        for op in opcodes:
            table[int(op)] = kind
    return bytes(table)


KIND_OF_OPCODE = _kind_table()      # operation code -> kind, one index per command

# where the service time of a command went (the fabric cannot tell apart: storage)
STORAGE, FLASH, FLASH_MISS = range(3)

# counter columns
(READ_OPS, WRITE_OPS, READ_BYTES, WRITE_BYTES, FLUSH_OPS, UNMAP_OPS, COMPARE_WRITE_OPS,
 XCOPY_OPS, OTHER_OPS, ERRORS, READ_US, WRITE_US, READ_MAX_US, WRITE_MAX_US, NETWORK_US,
 QUEUE_US, STORAGE_US, FLASH_US, FLASH_MISS_US, STORAGE_OPS, FLASH_OPS, FLASH_MISS_OPS,
 OTHER_US) = range(23)
COUNTERS = ("read_ops", "write_ops", "read_bytes", "write_bytes", "flush_ops", "unmap_ops",
            "compare_write_ops", "xcopy_ops", "other_ops", "errors", "read_us", "write_us",
            "read_max_us", "write_max_us", "network_us", "queue_us", "storage_us", "flash_us",
            "flash_miss_us", "storage_ops", "flash_ops", "flash_miss_ops", "other_us")
NCOUNTERS = 24                      # one spare column keeps the histograms 8-aligned
OPS_OF_KIND = (READ_OPS, WRITE_OPS, FLUSH_OPS, UNMAP_OPS, COMPARE_WRITE_OPS, XCOPY_OPS,
               OTHER_OPS)
MAX_COLUMNS = (READ_MAX_US, WRITE_MAX_US)     # combined by max, not by sum

SUB_BITS = 2
SUB = 1 << SUB_BITS
BUCKETS = 32 * SUB                  # up to 2^32 us
READ_HIST = NCOUNTERS
WRITE_HIST = NCOUNTERS + BUCKETS
WIDTH = NCOUNTERS + 2 * BUCKETS


def bucket_of(us: np.ndarray) -> np.ndarray:
    """The bucket of each latency in microseconds (int64 array in, int64 array out)."""
    us = np.maximum(us, 0)
    exp = np.zeros(us.shape, np.int64)
    big = us >= SUB
    # the position of the highest bit, from frexp: exact for values below 2^53
    exp[big] = np.frexp(us[big].astype(np.float64))[1] - 1 - SUB_BITS
    # below SUB the value is its own bucket; above, SUB buckets per power of two
    b = np.where(big, (exp + 1) * SUB + ((us >> np.maximum(exp, 0)) - SUB), us)
    return np.minimum(b, BUCKETS - 1)


def bucket_low(b: int) -> int:
    """The smallest latency (us) bucket ``b`` holds."""
    if b < SUB:
        return b
    exp = b // SUB - 1
    return (SUB + b % SUB) << exp
