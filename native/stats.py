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
non-zero status counts as an error. The slow twin is
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
def add_records(counters: np.ndarray, rec: np.ndarray, cols: np.ndarray,
                kinds: np.ndarray) -> None:
    """Add every record of ``rec`` into ``counters`` (module docstring)."""
    sub_bits = cols[COLS_SUB_BITS]
    buckets = cols[COLS_BUCKETS]
    for i in range(rec.shape[0]):
        row = np.int64(rec[i, 0])
        kind = np.int64(kinds[np.int64(rec[i, 1])])
        ops = np.int64(rec[i, 2])
        t_arr = rec[i, 4]
        t_done = rec[i, 7]
        t_grant = rec[i, 5] if rec[i, 5] != 0.0 else t_arr
        t_exec = rec[i, 6] if rec[i, 6] != 0.0 else t_grant
        total = np.int64((t_done - t_arr) * 1e6)
        c = counters[row]
        c[cols[COLS_OPS + kind]] += ops
        c[cols[COLS_BYTES + kind]] += np.int64(rec[i, 3])
        c[cols[COLS_LAT + kind]] += total
        c[cols[COLS_QUEUE]] += np.int64((t_grant - t_arr) * 1e6)
        if rec[i, 9] != 0.0:
            c[cols[COLS_ERRORS]] += 1
        if kind <= 1:
            if kind == 1:
                c[cols[COLS_NETWORK]] += np.int64((t_exec - t_grant) * 1e6)
                svc = 0
            else:
                svc = np.int64(rec[i, 8])
            c[cols[COLS_SVC_US + svc]] += np.int64((t_done - t_exec) * 1e6)
            c[cols[COLS_SVC_OPS + svc]] += ops
            m = cols[COLS_MAX + kind]
            if total > c[m]:
                c[m] = total
            if ops > 0:
                c[cols[COLS_HIST + kind] + bucket(total, sub_bits, buckets)] += ops


def warm() -> None:
    """Compile (or load from Numba's cache) before the first command."""
    add_records(np.zeros((1, 64), np.int64), np.zeros((1, 10), np.float64),
                np.zeros(COLS_LEN, np.int64), np.zeros(256, np.int64))
