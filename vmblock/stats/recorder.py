"""The one accounting point of the data path: what the iSCSI fabric calls per command.

The fabric (``vmblock.iscsi.transfer``) stamps each SCSI command that waits on its way
through and, when its status has been handed to the socket, accounts it here. The times it
stamps (``time.perf_counter`` seconds, on ``TaskState``):

    t_arr    the command PDU arrived (for a command parked behind a CmdSN gap: when parked)
    t_grant  the data budget granted its buffer, or its CmdSN came due (0: at once)
    t_exec   its Data-Out was all in and it went to the SCSI core
    t_io     (on ``ScsiTask``, by the SCSI core) an executor thread started its I/O
    (now)    its status was sent

and the latency split is: **queue** = t_grant - t_arr (CmdSN window, data budget, a QoS
wait) plus t_io - t_exec (the executor's queue), **network/host** = t_exec - t_grant for a
write (R2T -> the last Data-Out: the initiator and the wire), **service** = now - (t_io or
t_exec), which counts as **flash** (a read the cache served), **flash_miss** (a read that had
to go to the capacity tier behind the cache) or **storage** (everything else: capacity tier
I/O). ``done`` folds t_io into the kernel's record: t_grant later and t_exec = t_io by the
executor's queue, which leaves the network part as it was.

Most commands are counted in a group: every command that arrived with one receive buffer
shares its arrival time (``arrive``, one clock read per buffer), and every status that left
with one socket write shares its send time (``sent``, one clock read per write). ``done``
stages such a command as its bytes in a list, after a key (its row, its opcode and the
cache's class above the low byte, as ``vmblock.native.stats.KEY`` says) whenever the key
differs from the last command's: the int it appends is the one the fabric already has, so
nothing is computed and no int is made for it per command (the list holds the fabric's bytes
int until the flush), and a run of commands on one LU has one key. The times are kept once
per buffer and per write beside the list's length then, and the kernel gives each command
the arrival before it and the first send after it. A command
is in its buffer's group when it waited for nothing inside the target, ended GOOD and is not
on a split LU. Waiting is what the fabric marks: a command that is going to wait (a CmdSN
gap, the data budget, its Data-Out, QoS, an executor thread, the owner process) gets its own
times as it arrives (``ScsiTransfer.own_times``: t_arr stops being None), and every other one
runs to its status while its buffer is being read, so its buffer's arrival is the newest
(``group``) and its status leaves with that buffer's answers. Every command not grouped is
staged as a long record of the kernel's ten fields with the number of sends before it in
place of t_done. The fabric spells the grouped case of a command on an LU with one row and no
cache probe inline (``ScsiTransfer.task_done``: the appends without a call; ``LuRows.inline``)
and calls ``done`` for the rest; nothing else about a command is stamped on the way.

``flush`` adds a whole batch into this process's slab of counters with two Numba kernel
calls (``vmblock.native.stats``: ``add_grouped``, ``add_records``; slabs:
``vmblock.stats.arena``). A flush is scheduled ``FLUSH_DELAY`` after a batch's first buffer
(``schedule``, the event loop's ``call_later``), or runs at a buffer's arrival once a batch is
``FLUSH_AT`` big; the owner's readers flush first, and ask each worker to flush
(``vmblock.worker``'s ``STATS_FLUSH``), so what they read is exact.
"""

from __future__ import annotations

import time
from array import array

import numpy as np

from vmblock.native import stats as stats_kernels
from vmblock.native.stats import OP_SHIFT
from vmblock.stats import layout as L
from vmblock.stats.rows import cdb_range

# The kernel's record (vmblock.native.stats): row, opcode, ops, bytes, t_arr, t_grant, t_exec,
# t_done, class, status. A grouped command is staged as its bytes after its key (KEY); a long
# one as the kernel's record with the sends before it in place of t_done.
REC = LONG = 10
CLASS_SHIFT = OP_SHIFT + 8
FLUSH_AT = 16384            # staged commands (of either kind) added at once
# seconds from a batch's first buffer to its flush: readers flush first, so this only bounds
# how often a busy worker pays a flush's fixed cost (a few hundred us, its caches cold)
FLUSH_DELAY = 0.5
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
        self.fast: list[int] = []   # keys and grouped commands (vmblock.native.stats.KEY)
        self.key = None             # the key of the last grouped command staged
        self.long = array("d")
        # len(fast), time at each buffer's first command; one pair always there (the newest).
        # Lists: two appends cost less than one array.extend of a tuple
        self.arrivals: list = [0, 0.0]
        self.sends: list = []       # len(fast), time at each ``sent`` since the last flush
        self.group = 0.0            # the arrival time of the newest buffer
        self.sent_before = 0        # sends before the staged ones: a long record's epoch is
                                    # this plus the sends staged before it
        self.scheduled = False

    def arrive(self) -> float:
        """A receive buffer is here: return the time, which starts a group."""
        fast = self.fast
        if len(fast) >= FLUSH_AT:       # the long records' bound is checked as they come
            self.flush()
        t = self.group = self.clock()
        arrivals = self.arrivals
        arrivals.append(len(fast))
        arrivals.append(t)
        if not self.scheduled:
            self._schedule()
        return t

    def done(self, st, task, nbytes: int) -> None:
        """``st``'s command (``task``) has its status in the connection's output, having
        moved ``nbytes`` of data; the output's next write calls ``sent``."""
        lr = st.stats_rows
        probe = st.probe
        t_arr = st.t_arr
        if t_arr is not None:       # it waited inside the target: its own times
            t_grant, t_exec = st.t_grant, st.t_exec
        elif task.status or lr.starts is not None:      # it ended as its buffer was read
            t_arr, t_grant, t_exec = self.group, 0.0, 0.0
        else:
            key = lr.keys[task.cdb[0]]
            if probe is not None:
                key |= probe_class(lr, probe) << CLASS_SHIFT
            if key != self.key:
                self.fast.append(key)
                self.key = key
            self.fast.append(nbytes)
            return
        if len(self.long) >= FLUSH_AT * LONG:
            self.flush()
        if task.t_io:       # the executor's queue (t_exec to t_io) counts as queue
            t_grant = t_grant or t_arr
            t_exec = t_exec or t_grant
            t_grant, t_exec = t_grant + task.t_io - t_exec, task.t_io
        times = (t_arr, t_grant, t_exec, self.sent_before + (len(self.sends) >> 1),
                 0 if probe is None else probe_class(lr, probe), task.status)
        if lr.starts is None:
            self.long.extend((lr.row, task.cdb[0], 1, nbytes) + times)
        else:
            self._split(lr, task.cdb, nbytes, times)
        if not self.scheduled:
            self._schedule()

    def sent(self) -> None:
        """A connection wrote its answers now: the statuses staged before it left by now."""
        sends = self.sends
        sends.append(len(self.fast))
        sends.append(self.clock())
        if not self.scheduled:      # a write without statuses (a NOP-In) is dropped with it
            self._schedule()

    def _schedule(self) -> None:
        self.scheduled = True
        if self.schedule is not None:
            self.schedule(FLUSH_DELAY, self.flush)

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
        """Add the staged commands into the counters (module docstring)."""
        self.scheduled = False
        if not self.fast and not self.long:
            self._restart()
            return
        # copies: the arrays cannot shrink while a view of them is held
        sends = np.array(self.sends, np.float64).reshape(-1, 2)
        now = self.clock()                              # unsent yet: now
        long = None
        if self.long:
            long = np.array(self.long, np.float64).reshape(-1, LONG)
            ends = np.append(sends[:, 1], now)
            long[:, 7] = ends[long[:, 7].astype(np.int64) - self.sent_before]
        fast = np.fromiter(self.fast, np.int64, len(self.fast))
        arrivals = np.array(self.arrivals, np.float64).reshape(-1, 2)
        self._restart()
        # rows came from the owner
        stats_kernels.add_grouped(self.counters, fast, arrivals, sends, now, COLS, KINDS)
        if long is not None:
            stats_kernels.add_records(self.counters, long, COLS, KINDS)

    def _restart(self) -> None:
        """Empty the staging; the buffer being read now stays the group it is."""
        self.fast.clear()
        self.key = None
        del self.long[:]
        self.sent_before += len(self.sends) >> 1
        self.sends.clear()
        self.arrivals = [0, self.group]


def probe_class(lr, probe: int) -> int:
    """A read's class from the cache's capacity reads before it (``probe``) and now:
    1 flash (none since), 2 flash miss. The owner of worker processes classifies a forwarded
    command with it too. In a worker (``lr.probe`` None: the cache is the
    owner's) ``probe`` is the class the owner found, sent back in its RESULT."""
    if lr.probe is None:
        return probe
    return 2 if lr.probe.capacity_reads != probe else 1


def add_records(counters: np.ndarray, rec: np.ndarray) -> None:
    """Add records (n, REC) into ``counters`` (rows, WIDTH): the kernel, inputs checked."""
    if rec.ndim != 2 or rec.shape[1] != REC or counters.shape[1] != L.WIDTH:
        raise ValueError("records are (n, 10) and counter rows WIDTH wide")
    if len(rec) and (rec[:, 0].max() >= len(counters) or rec[:, 0].min() < 0
                     or rec[:, 1].max() > 255 or rec[:, 1].min() < 0):
        raise ValueError("a record names a row or opcode that does not exist")
    stats_kernels.add_records(counters, np.ascontiguousarray(rec, np.float64), COLS, KINDS)
