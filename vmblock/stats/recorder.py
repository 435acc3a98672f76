"""The one accounting point of the data path: what the iSCSI fabric calls per command.

The fabric (``vmblock.iscsi.transfer``) stamps each SCSI command on its way through and, when
its status has been handed to the socket, calls ``StatsRecorder.done``. The times it stamps
(``time.perf_counter`` seconds, on ``TaskState``):

    t_arr    the command PDU arrived (for a command parked behind a CmdSN gap: when parked)
    t_grant  the data budget granted its buffer (0: at once)
    t_exec   its Data-Out was all in and it went to the SCSI core
    (now)    its status was sent

and the latency split is: **queue** = t_grant - t_arr (CmdSN window, data budget; a QoS wait
will sit here), **network/host** = t_exec - t_grant for a write (R2T -> the last Data-Out:
the initiator and the wire), **service** = now - t_exec, which counts as **flash** (a read the
cache served), **flash_miss** (a read that had to go to the capacity tier behind the cache)
or **storage** (everything else: capacity tier I/O, executor queue included).

``done`` appends one record of ten float64 (the LU's row, the opcode, the byte count and
the four times, raw: all arithmetic is the kernel's) to a staging buffer (``array('d')``: no
Python object per sample survives); ``flush`` adds a whole batch into this process's slab of
counters with one Numba kernel call (``vmblock.native.stats``; slabs: ``vmblock.stats.arena``).
A flush is scheduled ``FLUSH_DELAY`` after the first record of a batch (``schedule``, the
event loop's ``call_later``); the owner's readers flush first, and ask each worker to flush
(``vmblock.worker``'s ``STATS_FLUSH``), so what they read is exact.
"""

from __future__ import annotations

import time
from array import array

import numpy as np

from vmblock.native import stats as stats_kernels
from vmblock.stats import layout as L
from vmblock.stats.rows import cdb_range

# The kernel's record (vmblock.native.stats): row, opcode, ops, bytes, t_arr, t_grant, t_exec,
# t_done, class, status. The fabric stages the common case (no wait for budget or data, no
# cache probe, GOOD status, no split) as a short record: row, opcode, bytes, t_arr, epoch;
# every other one as a long record: the kernel's fields with the epoch in place of t_done.
# The epoch counts ``sent`` calls: a record's t_done is the time of the first ``sent`` after
# it (its status left with that write), or the flush's time when none came yet.
REC = 10
SHORT, LONG = 5, 10
FLUSH_AT = SHORT * 4096     # a batch this big is added at once, scheduled or not
FLUSH_DELAY = 0.05          # seconds from a batch's first record to its flush
_KIND = L.KIND_OF_OPCODE
KINDS = np.frombuffer(_KIND, np.uint8).astype(np.int64)
# the column numbers the kernel needs, in vmblock.native.stats's order
_NO_COL = L.NCOUNTERS - 1   # the spare column: where "no such counter" adds land
COLS = np.array([*L.OPS_OF_KIND,
                 L.READ_BYTES, L.WRITE_BYTES, *[_NO_COL] * 5,
                 L.READ_US, L.WRITE_US, *[L.OTHER_US] * 5,
                 L.STORAGE_US, L.FLASH_US, L.FLASH_MISS_US,
                 L.STORAGE_OPS, L.FLASH_OPS, L.FLASH_MISS_OPS,
                 L.READ_HIST, L.WRITE_HIST, *L.MAX_COLUMNS,
                 L.NETWORK_US, L.QUEUE_US, L.ERRORS, L.SUB_BITS, L.BUCKETS], np.int64)
assert len(COLS) == stats_kernels.COLS_LEN


class StatsRecorder:
    """One process's accounting point (module docstring) over its slab ``counters``
    ((rows, WIDTH) int64)."""

    clock = staticmethod(time.perf_counter)

    def __init__(self, counters: np.ndarray, schedule=None):
        """``schedule(delay, callback)``: the loop's ``call_later`` (None: flushes only when
        asked or when a batch is full)."""
        self.counters = counters
        self.schedule = schedule
        self.short = array("d")
        self.long = array("d")
        self.sends = array("d")     # the time of each ``sent`` since the last flush
        self.epoch = 0              # == len(sends): the epoch of records staged now
        self.scheduled = False
        self.unsent = False         # records staged since the last ``sent``

    def done(self, st, task, nbytes: int) -> None:
        """``st``'s command (``task``) has its status in the connection's output, having
        moved ``nbytes`` of data; the output's next write calls ``sent``."""
        lr = st.stats_rows
        probe = st.probe
        if (probe is None and lr.starts is None and not task.status and not st.t_grant
                and not st.t_exec):
            self.short.extend((lr.row, task.cdb[0], nbytes, st.t_arr, self.epoch))
        else:
            cls = 0 if probe is None else 2 if lr.probe.capacity_reads != probe else 1
            times = (st.t_arr, st.t_grant, st.t_exec, self.epoch, cls, task.status)
            if lr.starts is None:
                self.long.extend((lr.row, task.cdb[0], 1, nbytes) + times)
            else:
                self._split(lr, task.cdb, nbytes, times)
        self.unsent = True
        if not self.scheduled:
            self.scheduled = True
            if self.schedule is not None:
                self.schedule(FLUSH_DELAY, self.flush)
        elif len(self.short) >= FLUSH_AT:
            self.flush()

    def sent(self) -> None:
        """The statuses staged since the last call were written to their socket now."""
        self.sends.append(self.clock())
        self.epoch += 1
        self.unsent = False

    def _split(self, lr, cdb, nbytes: int, times: tuple) -> None:
        """Stage a command on a split LU: counted in its first range, bytes in each range."""
        op = cdb[0]
        rng = cdb_range(cdb, _KIND[op])
        if rng is None or not rng[1] or not nbytes:
            row = lr.row if rng is None else lr.pieces(rng[0], 1, 1)[0][0]
            self.long.extend((row, op, 1, nbytes) + times)
            return
        lba, blocks = rng
        pieces = lr.pieces(lba, blocks, max(nbytes // blocks, 1))
        for i, (row, part) in enumerate(pieces):
            if i == 0:
                self.long.extend((row, op, 1, part) + times)
            else:
                self.long.extend((row, op, 0, part, 0, 0, 0, times[3], 0, 0))

    def flush(self) -> None:
        """Add the staged records into the counters (module docstring)."""
        self.scheduled = False
        if not self.short and not self.long:
            return
        ends = np.append(np.frombuffer(self.sends, np.float64), self.clock())
        base = self.epoch - len(self.sends)
        short = np.frombuffer(self.short, np.float64).reshape(-1, SHORT)
        rec = np.zeros((len(short) + len(self.long) // LONG, REC))
        n = len(short)
        rec[:n, [0, 1, 3, 4]] = short[:, :4]
        rec[:n, 2] = 1
        rec[:n, 7] = ends[short[:, 4].astype(np.int64) - base]
        rec[n:] = np.frombuffer(self.long, np.float64).reshape(-1, LONG)
        rec[n:, 7] = ends[rec[n:, 7].astype(np.int64) - base]
        del short
        del self.short[:]
        del self.long[:]
        del self.sends[:]
        stats_kernels.add_records(self.counters, rec, COLS, KINDS)   # rows came from the owner


def add_records(counters: np.ndarray, rec: np.ndarray) -> None:
    """Add records (n, REC) into ``counters`` (rows, WIDTH): the kernel, inputs checked."""
    if rec.ndim != 2 or rec.shape[1] != REC or counters.shape[1] != L.WIDTH:
        raise ValueError("records are (n, 10) and counter rows WIDTH wide")
    if len(rec) and (rec[:, 0].max() >= len(counters) or rec[:, 0].min() < 0
                     or rec[:, 1].max() > 255 or rec[:, 1].min() < 0):
        raise ValueError("a record names a row or opcode that does not exist")
    stats_kernels.add_records(counters, np.ascontiguousarray(rec, np.float64), COLS, KINDS)
