"""Statistics kernel: add a batch of per-command records into counter rows.

``add_records(counters, rec, cols, kinds)``: ``counters`` is (rows, width) int64, ``rec``
(n, 10) float64 records as ``vmblock.stats.recorder`` builds them from what the fabric
staged: ``row, opcode, ops, bytes, t_arr, t_grant, t_exec, t_done, class, status`` (times in
seconds; 0 for t_grant or t_exec: at arrival), ``kinds`` the command kind of each opcode,
``cols`` the column numbers the layout gives (``COLS_*`` below say where in ``cols`` each is;
``vmblock.stats.recorder`` builds it from ``vmblock.stats.layout``). Per record: queue =
t_grant - t_arr, network = t_exec - t_grant (writes only), service = t_done - t_exec, total =
t_done - t_arr, in microseconds. Reads and writes (kinds 0 and 1) also add their service time
by class (a read's class: 0 storage, 1 flash, 2 flash miss; a write's is storage), their
maximum and a histogram bucket, log-linear with ``sub_bits`` sub-buckets per power of two; a
non-zero status counts as an error. A record stands for ``ops`` alike commands: every time and
count is multiplied by it (a range split's second piece has ops 0: bytes only). The slow twin is
``tests/stats/test_stats_recorder.naive_add``.
"""

from __future__ import annotations

import numpy as np
from numba import jit

from .jit import JIT

# layout of ``cols``: 7 ops columns by kind, 7 bytes columns, 7 latency-sum columns, 3
# service-time columns by class, 3 service-ops columns, 2 histogram starts (read, write),
# 2 maximum columns, then network, queue, errors, sub_bits, buckets
COLS_OPS, COLS_BYTES, COLS_LAT, COLS_SVC_US, COLS_SVC_OPS, COLS_HIST, COLS_MAX = (
    0, 7, 14, 21, 24, 27, 29)
COLS_NETWORK, COLS_QUEUE, COLS_ERRORS, COLS_SUB_BITS, COLS_BUCKETS = 31, 32, 33, 34, 35
COLS_LEN = 36
# grouped commands are staged as int64s of two kinds: a key, KEY | row << ROW_SHIFT |
# (opcode | class << 8) << OP_SHIFT, says the row and opcode of the commands after it; a
# command is its bytes alone (rows < 2**16, bytes < 2**32: an EDTL is 32 bits)
ROW_SHIFT, OP_SHIFT, KEY = 43, 32, 1 << 62


@jit(**JIT)
def bucket(us: int, sub_bits: int, buckets: int) -> int:
    """The log-linear bucket of ``us`` microseconds."""
    sub = 1 << sub_bits
    if us < sub:
        return max(us, 0)
    exp = 0
    v = us
    while v >= 2 * sub:
        v >>= 1
        exp += 1
    return min((exp + 1) * sub + (v - sub), buckets - 1)


@jit(**JIT)
def _add(c: np.ndarray, cols: np.ndarray, kind: int, ops: int, nbytes: int, t_arr: float,
         t_grant: float, t_exec: float, t_done: float, cls: int, status: float) -> None:
    """Add one command (``ops`` of them, alike) into its row ``c`` (module docstring)."""
    total = np.int64((t_done - t_arr) * 1e6)
    c[cols[COLS_OPS + kind]] += ops
    c[cols[COLS_BYTES + kind]] += nbytes
    c[cols[COLS_LAT + kind]] += total * ops
    c[cols[COLS_QUEUE]] += np.int64((t_grant - t_arr) * 1e6) * ops
    if status != 0.0:
        c[cols[COLS_ERRORS]] += ops
    if kind <= 1:
        if kind == 1:
            c[cols[COLS_NETWORK]] += np.int64((t_exec - t_grant) * 1e6) * ops
            cls = 0
        c[cols[COLS_SVC_US + cls]] += np.int64((t_done - t_exec) * 1e6) * ops
        c[cols[COLS_SVC_OPS + cls]] += ops
        if ops > 0:         # a command's bytes past its first range count no time (ops 0)
            m = cols[COLS_MAX + kind]
            if total > c[m]:
                c[m] = total
            b = bucket(total, cols[COLS_SUB_BITS], cols[COLS_BUCKETS])
            c[cols[COLS_HIST + kind] + b] += ops


@jit(**JIT)
def add_records(counters: np.ndarray, rec: np.ndarray, cols: np.ndarray,
                kinds: np.ndarray) -> None:
    """Add every record of ``rec`` into ``counters`` (module docstring)."""
    for i in range(rec.shape[0]):
        t_arr = rec[i, 4]
        t_grant = rec[i, 5] if rec[i, 5] != 0.0 else t_arr
        t_exec = rec[i, 6] if rec[i, 6] != 0.0 else t_grant
        _add(counters[np.int64(rec[i, 0])], cols, np.int64(kinds[np.int64(rec[i, 1])]),
             np.int64(rec[i, 2]), np.int64(rec[i, 3]), t_arr, t_grant, t_exec, rec[i, 7],
             np.int64(rec[i, 8]), rec[i, 9])


@jit(**JIT)
def add_grouped(counters: np.ndarray, fast: np.ndarray, arrivals: np.ndarray,
                sends: np.ndarray, now: float, cols: np.ndarray, kinds: np.ndarray) -> None:
    """Add commands that ran as they arrived and ended GOOD: ``fast`` is (n,) int64, keys
    and commands (``KEY``: a command counts under the last key before it); ``arrivals``
    and ``sends`` are (k, 2) float64 of (position in ``fast``, time), in order: a command
    arrived at the last arrival at or before its position and was sent at the first send
    after it (none yet: ``now``)."""
    a = 0
    s = 0
    # a run of alike commands (one key, one arrival and one send: the same times) is added
    # at once, ``ops`` of them with their bytes summed
    key = -1
    ops = 0
    nbytes = 0
    t_arr = t_done = 0.0
    for i in range(fast.shape[0]):
        moved = False
        while a + 1 < arrivals.shape[0] and arrivals[a + 1, 0] <= i:
            a += 1
            moved = True
        while s < sends.shape[0] and sends[s, 0] <= i:
            s += 1
            moved = True
        v = fast[i]
        if moved or v >= KEY:
            if ops:
                _add_run(counters, cols, kinds, key, ops, nbytes, t_arr, t_done)
            ops = 0
            nbytes = 0
            t_arr = arrivals[a, 1]
            t_done = sends[s, 1] if s < sends.shape[0] else now
            if v >= KEY:
                key = (v ^ KEY) >> OP_SHIFT
                continue
        ops += 1
        nbytes += v
    if ops:
        _add_run(counters, cols, kinds, key, ops, nbytes, t_arr, t_done)


@jit(**JIT)
def _add_run(counters: np.ndarray, cols: np.ndarray, kinds: np.ndarray, key: int, ops: int,
             nbytes: int, t_arr: float, t_done: float) -> None:
    """Add ``ops`` grouped commands of one ``key`` (a staged key without ``KEY``, shifted
    down to its row and opcode) and times."""
    opclass = key & 0x7FF
    _add(counters[key >> (ROW_SHIFT - OP_SHIFT)], cols, np.int64(kinds[opclass & 0xFF]), ops,
         nbytes, t_arr, t_arr, t_arr, t_done, opclass >> 8, 0.0)


def warm() -> None:
    """Compile (or load from Numba's cache) before the first command."""
    counters, cols, kinds = (np.zeros((1, 64), np.int64), np.zeros(COLS_LEN, np.int64),
                             np.zeros(256, np.int64))
    add_records(counters, np.zeros((1, 10), np.float64), cols, kinds)
    add_grouped(counters, np.array([KEY, 0], np.int64), np.zeros((1, 2), np.float64),
                np.zeros((1, 2), np.float64), 0.0, cols, kinds)
