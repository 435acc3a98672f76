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

# a staged record: row, opcode, ops, bytes, t_arr, t_grant, t_exec, t_done, class, status
REC = 10
FLUSH_AT = REC * 4096       # a batch this big is added at once, scheduled or not
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
        self.stage = array("d")
        self.scheduled = False

    def done(self, st, task, nbytes: int) -> None:
        """``st``'s command (``task``) sent its status, having moved ``nbytes`` of data."""
        lr = st.stats_rows
        probe = st.probe
        cls = 0 if probe is None else 2 if lr.probe.capacity_reads != probe else 1
        if lr.starts is None:
            self.stage.extend((lr.row, task.cdb[0], 1, nbytes, st.t_arr, st.t_grant, st.t_exec,
                               self.clock(), cls, task.status))
        else:
            self._split(lr, task.cdb, nbytes, (st.t_arr, st.t_grant, st.t_exec, self.clock(),
                                               cls, task.status))
        if not self.scheduled:
            self.scheduled = True
            if self.schedule is not None:
                self.schedule(FLUSH_DELAY, self.flush)
        if len(self.stage) >= FLUSH_AT:
            self.flush()

    def _split(self, lr, cdb, nbytes: int, times: tuple) -> None:
        """Stage a command on a split LU: counted in its first range, bytes in each range."""
        op = cdb[0]
        rng = cdb_range(cdb, _KIND[op])
        if rng is None or not rng[1] or not nbytes:
            row = lr.row if rng is None else lr.pieces(rng[0], 1, 1)[0][0]
            self.stage.extend((row, op, 1, nbytes) + times)
            return
        lba, blocks = rng
        pieces = lr.pieces(lba, blocks, max(nbytes // blocks, 1))
        for i, (row, part) in enumerate(pieces):
            if i == 0:
                self.stage.extend((row, op, 1, part) + times)
            else:
                self.stage.extend((row, op, 0, part, 0, 0, 0, 0, 0, 0))

    def flush(self) -> None:
        """Add the staged records into the counters (module docstring)."""
        self.scheduled = False
        if not self.stage:
            return
        rec = np.frombuffer(self.stage, np.float64).reshape(-1, REC)
        stats_kernels.add_records(self.counters, rec, COLS, KINDS)   # rows came from the owner
        del rec
        del self.stage[:]


def add_records(counters: np.ndarray, rec: np.ndarray) -> None:
    """Add records (n, REC) into ``counters`` (rows, WIDTH): the kernel, inputs checked."""
    if rec.ndim != 2 or rec.shape[1] != REC or counters.shape[1] != L.WIDTH:
        raise ValueError("records are (n, 10) and counter rows WIDTH wide")
    if len(rec) and (rec[:, 0].max() >= len(counters) or rec[:, 0].min() < 0
                     or rec[:, 1].max() > 255 or rec[:, 1].min() < 0):
        raise ValueError("a record names a row or opcode that does not exist")
    stats_kernels.add_records(counters, np.ascontiguousarray(rec, np.float64), COLS, KINDS)
