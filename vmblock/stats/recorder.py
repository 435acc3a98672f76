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

``done`` appends one record of nine int64 to a staging buffer (``array('q')``: no Python
object per sample survives); ``flush`` adds a whole batch into this process's slab of
counters with ``np.add.at`` (``vmblock.stats.arena``). A flush is scheduled (``schedule``,
the event loop's ``call_soon``) when the first record of a batch comes in, so the counters
are exact one loop iteration after a status was sent, and every reader flushes first.
"""

from __future__ import annotations

import time
from array import array

import numpy as np

from vmblock.stats import layout as L
from vmblock.stats.rows import cdb_range

REC = 9                     # row, kind, ops, bytes, total, network, queue, service, class
FLUSH_AT = REC * 4096       # a batch this big is added at once, scheduled or not
_KIND = L.KIND_OF_OPCODE
_READ, _WRITE = L.READ, L.WRITE
_SERVICE_US = np.array([L.STORAGE_US, L.FLASH_US, L.FLASH_MISS_US], np.int64)
_SERVICE_OPS = np.array([L.STORAGE_OPS, L.FLASH_OPS, L.FLASH_MISS_OPS], np.int64)
_OPS = np.array(L.OPS_OF_KIND, np.int64)
_NO_COL = L.NCOUNTERS - 1   # the spare column: where "no such counter" adds land
_BYTES = np.array([L.READ_BYTES, L.WRITE_BYTES] + [_NO_COL] * 5, np.int64)
_LAT = np.array([L.READ_US, L.WRITE_US] + [L.OTHER_US] * 5, np.int64)
_HIST = np.array([L.READ_HIST, L.WRITE_HIST], np.int64)
_MAX = np.array(L.MAX_COLUMNS, np.int64)


class StatsRecorder:
    """One process's accounting point (module docstring) over its slab ``counters``
    ((rows, WIDTH) int64)."""

    clock = staticmethod(time.perf_counter)

    def __init__(self, counters: np.ndarray, schedule=None):
        self.counters = counters
        self.schedule = schedule
        self.stage = array("q")
        self.scheduled = False

    def done(self, st, task, nbytes: int) -> None:
        """``st``'s command (``task``) sent its status, having moved ``nbytes`` of data."""
        now = self.clock()
        lr = st.stats_rows
        t_arr = st.t_arr
        t_grant = st.t_grant or t_arr
        t_exec = st.t_exec or now
        kind = _KIND[task.cdb[0]]
        klass = 0
        probe = st.probe
        if probe is not None and kind == _READ:
            klass = 2 if lr.probe.capacity_reads != probe else 1
        network = int((t_exec - t_grant) * 1e6) if kind == _WRITE else 0
        queue = int((t_grant - t_arr) * 1e6)
        service = int((now - t_exec) * 1e6)
        total = int((now - t_arr) * 1e6)
        if task.status:
            klass |= 4                      # an error (CHECK CONDITION, busy, ...)
        if lr.starts is None:
            self.stage.extend((lr.row, kind, 1, nbytes, total, network, queue, service, klass))
        else:
            self._split(lr, task.cdb, kind, nbytes, (total, network, queue, service, klass))
        if not self.scheduled:
            self.scheduled = True
            if self.schedule is not None:
                self.schedule(self.flush)
        if len(self.stage) >= FLUSH_AT:
            self.flush()

    def _split(self, lr, cdb, kind: int, nbytes: int, times: tuple) -> None:
        """Stage a command on a split LU: counted in its first range, bytes in each range."""
        rng = cdb_range(cdb, kind)
        if rng is None or not rng[1] or not nbytes:
            row = lr.row if rng is None else lr.pieces(rng[0], 1, 1)[0][0]
            self.stage.extend((row, kind, 1, nbytes) + times)
            return
        lba, blocks = rng
        pieces = lr.pieces(lba, blocks, max(nbytes // blocks, 1))
        for i, (row, part) in enumerate(pieces):
            if i == 0:
                self.stage.extend((row, kind, 1, part) + times)
            else:
                self.stage.extend((row, kind, 0, part, 0, 0, 0, 0, 0))

    def flush(self) -> None:
        """Add the staged records into the counters (module docstring)."""
        self.scheduled = False
        if not self.stage:
            return
        rec = np.frombuffer(self.stage, np.int64).reshape(-1, REC).copy()
        del self.stage[:]
        add_records(self.counters, rec)


def add_records(counters: np.ndarray, rec: np.ndarray) -> None:
    """Add records (n, REC) into ``counters`` (rows, WIDTH): the vectorized kernel."""
    row, kind, ops, nbytes, total, network, queue, service, klass = rec.T
    base = row * L.WIDTH
    rw = kind <= _WRITE
    svc = klass & 3
    flat = counters.reshape(-1)
    errors = (klass >> 2) & 1
    idx = np.concatenate((
        base + _OPS[kind], base + _BYTES[kind], base + _LAT[kind], base + L.NETWORK_US,
        base + L.QUEUE_US, base + L.ERRORS,
        (base + _SERVICE_US[svc])[rw], (base + _SERVICE_OPS[svc])[rw],
        (base + _HIST[np.minimum(kind, 1)] + L.bucket_of(total))[rw & (ops > 0)]))
    val = np.concatenate((
        ops, nbytes, total, network, queue, errors,
        service[rw], ops[rw], ops[rw & (ops > 0)]))
    np.add.at(flat, idx, val)
    if rw.any():
        np.maximum.at(flat, (base + _MAX[np.minimum(kind, 1)])[rw], total[rw])
