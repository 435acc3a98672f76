"""``SharedMapsFastPath``: a worker runs READ and WRITE itself over the owner's shared maps.

The owner sends ``STORE`` once (``publish.Publisher.store_message``): the shared words
(``shared``), the leaf and L1 arenas and the refcounts (memfds, mapped read-only at their
reserved length, so their growth needs nothing here) and the two tier files, with the rule
from a global AU to (file, offset): below ``ncap`` the capacity file at ``p * au``, else the
flash file at ``(p - fshift) * au``. ``LUNS`` and ``HANDOFF`` bring each target's LUN -> LU
record slot.

``claim`` takes READ/WRITE(6/10/12/16) of an LU with a record whose flag word has no FORWARD
bit, from a session with no unit attention pending there (its UA word), a SIMPLE task, no
protection bits, in range, a WRITE without FUA whose EDTL is its transfer length and that
touches no watched block (a datastore's label or metadata area: ``WATCH_LOW``/``WATCH_HIGH``,
set by the owner, whose store sees the write and re-reads the map); anything
else, and anything ``execute`` finds changed, goes to the owner (which builds the right
sense). ``execute`` is one read-side section (``shared``): publish
the epoch, check the flag word again, look the AUs up; a READ ``preadv``s mapped AUs (zeros
for unmapped ones); a WRITE overwrites in place only when every AU it touches is mapped and
owned (refcount 1) and the LU is not write-through, else it is forwarded.

A READ runs in the event loop when the page cache has all of it (``preadv2`` with
``RWF_NOWAIT``), whatever its size, else in a thread of the loop's executor, so the loop keeps
serving other commands while the device reads (``preadv`` releases the GIL). Unlike the
one-process server (``vmblock.scsi.sbc.read``: above ``SYNC_IO_BYTES`` always a thread), a
cached 1 MiB read stays in the loop: the thread's hop cost more than the 55 us copy it
moved (docs/workers.md, "Measured"). On a file system that cannot tell, reads up to
``SYNC_IO_BYTES`` run in the loop, larger ones in a thread. The section of a read in a
thread outlives ``execute``: it moves to one of the worker's off-loop words (``shared``),
which the thread clears when its I/O is done. A task aborted (TMF) while its read is in a
thread keeps its section to the end of the read; the fabric then drops its answer.

Why durable writes (FUA, WCE=0) go to the owner: an fdatasync here would make the data
durable, not the mapping of an AU that an earlier write allocated and the owner has not
committed yet; the owner's flush does both. Nothing here changes a map; the worker's write
count tells the owner's next commit to fdatasync the tier files (SYNCHRONIZE CACHE is
forwarded).
"""

from __future__ import annotations

import asyncio
import errno
import os
import time
from pathlib import Path

import numpy as np

from vmblock.native import extent as extent_kernels
from vmblock.native.extent import LEAF_BITS, LEAF_MASK, UNMAPPED
from vmblock.scsi.cdb import BLOCK_LAYOUTS, FUA, PROTECT_MASK, RW6_LBA_HIGH_MASK
from vmblock.scsi.constants import CONTROL_NACA, Opcode
from vmblock.scsi.lu import MAX_TRANSFER_BYTES, SYNC_IO_BYTES
from vmblock.scsi.task import TASK_ATTR_SIMPLE, ScsiTask
from vmblock.store.shm import SharedArray
from vmblock.store.tier import read_full, write_full

from .publish import HOOK_ENV
from .shared import (
    ACTIVE,
    BLOCK_SIZE,
    BLOCKS,
    EPOCH,
    FLAGS,
    FORWARD,
    L1_LEN,
    L1_OFF,
    OFF_LOOP_SLOTS,
    READS,
    UA_BASE,
    UA_BITS,
    WATCH_HIGH,
    WATCH_LOW,
    WORDS,
    WRITE_THROUGH,
    WRITES,
    off_loop,
    record,
)

WRITE_OPS = {Opcode.WRITE_6, Opcode.WRITE_10, Opcode.WRITE_12, Opcode.WRITE_16}
CDB_SIZE = {Opcode.READ_6: 6, Opcode.WRITE_6: 6, Opcode.READ_10: 10, Opcode.WRITE_10: 10,
            Opcode.READ_12: 12, Opcode.WRITE_12: 12, Opcode.READ_16: 16, Opcode.WRITE_16: 16}
HOOK_POLL = 0.001           # test-only hook: seconds between looks at its file


class SharedMapsFastPath:
    """The fast path over the shared maps (module docstring); ``forward`` sends a command
    that ``execute`` gives back to the owner."""

    def __init__(self, index: int, info: dict, fds: list[int], forward, tsih_of):
        self.index = index
        self.forward = forward
        self.tsih_of = tsih_of          # Nexus -> the TSIH of its session in this worker
        ctl, leaves, l1, refs, self.cap_fd, self.flash_fd = fds
        self.words = SharedArray("", np.int64, WORDS, fd=ctl).array       # own words written
        map_dt, l1_dt, ref_dt = info["dtypes"]
        self.leaves = SharedArray.attach(leaves, map_dt, info["leaves"]).array
        self.l1 = SharedArray.attach(l1, l1_dt, info["l1"]).array
        self.refs = SharedArray.attach(refs, ref_dt, info["refs"]).array
        # one word, entry or count at a time through memoryviews: a load costs 20 ns there,
        # 50 ns by numpy's item() (the per-command path; numpy for the batch lookups)
        self.wv, self.l1v, self.leafv, self.refv = (
            memoryview(a) for a in (self.words, self.l1, self.leaves, self.refs))
        self.au = info["au"]
        self.ncap = info["ncap"]
        self.fshift = info["fshift"]
        self.slots: dict[tuple[str, int], int] = {}     # (target, LUN) -> LU record slot
        # reads try the page cache first, in the loop (0: the file system cannot tell; then
        # reads up to SYNC_IO_BYTES run in the loop whatever it takes, larger ones in a thread)
        self.nowait = os.RWF_NOWAIT
        start = off_loop(index)
        self.free = list(range(start, start + OFF_LOOP_SLOTS))    # off-loop section words
        hook = os.environ.get(HOOK_ENV)
        self.hook = Path(hook) if hook else None

    def set_slots(self, target: str, slots: dict) -> None:
        """The LU record slots of ``target``'s LUNs (a ``LUNS`` or ``HANDOFF``)."""
        for key in [k for k in self.slots if k[0] == target]:
            del self.slots[key]
        for lun, slot in slots.items():
            self.slots[(target, int(lun))] = slot

    # ---- claim --------------------------------------------------------------------------
    def claim(self, task: ScsiTask) -> bool:
        """Take a READ/WRITE the worker can run (module docstring); False: forward it."""
        slot = self.slots.get((task.nexus.target, task.lun))
        if slot is None or task.attr != TASK_ATTR_SIMPLE:
            return False
        cdb = task.cdb
        op = cdb[0]
        size = CDB_SIZE.get(op)
        if size is None or len(cdb) < size or cdb[size - 1] & CONTROL_NACA:
            return False
        r = record(slot)
        words = self.wv
        ua, bit = UA_BASE + self.tsih_of(task.nexus), 1 << (slot % UA_BITS)
        if words[r + FLAGS] & FORWARD or words[ua] & bit:
            return False
        if size == 6:
            lba = ((cdb[1] & RW6_LBA_HIGH_MASK) << 16) | (cdb[2] << 8) | cdb[3]
            blocks = cdb[4] or 256
        else:
            flags, lba, blocks = BLOCK_LAYOUTS[size].fields.unpack_from(cdb, 1)
            if flags & (PROTECT_MASK | FUA):
                return False
        bs = words[r + BLOCK_SIZE]
        nbytes = blocks * bs
        if not blocks or nbytes > MAX_TRANSFER_BYTES or lba + blocks > words[r + BLOCKS]:
            return False
        write = op in WRITE_OPS
        if write:
            if not task.write or task.edtl != nbytes:
                return False
            if lba < words[r + WATCH_LOW] or lba + blocks > words[r + WATCH_HIGH]:
                return False        # a datastore's label or metadata: the owner watches it
            task.data_out_len = nbytes
        else:
            task.data_out_len = 0
        task.cdb_xfer_len = nbytes
        task.handler = (r, lba * bs, nbytes, write, ua, bit)
        return True

    # ---- execute ------------------------------------------------------------------------
    def execute(self, task: ScsiTask):
        """Run a claimed command in one read-side section; a ``Forwarded`` when it has to go
        to the owner after all, a future when a thread reads it, else None (done)."""
        r, offset, n, write, ua, bit = task.handler
        words = self.wv
        me = ACTIVE + self.index
        words[me] = epoch = words[EPOCH]   # before any flag, entry, leaf or refcount load
        try:
            flags = words[r + FLAGS]
            if flags & FORWARD or (write and flags & WRITE_THROUGH) or words[ua] & bit:
                return self._give_back(task)
            au = self.au
            first = offset // au
            off = words[r + L1_OFF]
            if (offset + n - 1) // au == first:      # one AU: every 4 KiB I/O, inline
                return self._one(task, off, first, offset, n, write, epoch)
            count = (offset + n - 1) // au - first + 1
            l1 = self.l1[off:off + words[r + L1_LEN]]
            paus = extent_kernels.lookup_batch(
                l1, self.leaves, np.arange(first, first + count, dtype=np.int64))
            if write:
                refs = self.refs
                if (paus == UNMAPPED).any() or (refs[paus] != 1).any():
                    return self._give_back(task)
                # a copy-on-write remaps before it drops the old AU's count: read the map
                # again after the counts (as ExtentStore.write does)
                again = extent_kernels.lookup_batch(
                    l1, self.leaves, np.arange(first, first + count, dtype=np.int64))
                if not np.array_equal(again, paus):
                    return self._give_back(task)
                self._pause("write")
                data = task.data_out
                for a, b, fd, pos in self._segments(paus, first, offset, n):
                    write_full(fd, [data[a:b]], pos)
                words[WRITES + self.index] += 1
                return None
            buf = bytearray(n)
            mapped = [s for s in self._segments(paus, first, offset, n) if s[2] is not None]
            self._pause("read")
            if mapped and n > SYNC_IO_BYTES and not self.nowait:
                return self._off_loop(task, mapped, buf, epoch)     # nothing tells: a thread
            view = memoryview(buf)
            for a, b, fd, pos in mapped:
                if not self._nowait(fd, view[a:b], pos):
                    return self._off_loop(task, mapped, buf, epoch)
            task.data_in = buf
            words[READS + self.index] += 1
        finally:
            words[me] = 0
        return None

    def _one(self, task: ScsiTask, off: int, first: int, offset: int, n: int, write: bool,
             epoch: int):
        """``execute`` of a command inside one AU (in the caller's section)."""
        leaves = self.leafv
        i = (self.l1v[off + (first >> LEAF_BITS)] << LEAF_BITS) | (first & LEAF_MASK)
        p = leaves[i]
        if p == UNMAPPED:
            if write:
                return self._give_back(task)
            self._pause("read")
            task.data_in = bytearray(n)
            self.wv[READS + self.index] += 1
            return None
        if p < self.ncap:
            fd, pos = self.cap_fd, (p - first) * self.au + offset
        else:
            fd, pos = self.flash_fd, (p - self.fshift - first) * self.au + offset
        if write:
            # owned, and the map read again after the count (as ExtentStore.write does)
            if self.refv[p] != 1 or leaves[i] != p:
                return self._give_back(task)
            self._pause("write")
            data = task.data_out[:n]
            if os.pwrite(fd, data, pos) != n:
                write_full(fd, [data], pos)
            self.wv[WRITES + self.index] += 1
            return None
        buf = bytearray(n)
        self._pause("read")
        if n > SYNC_IO_BYTES and not self.nowait:      # nothing tells what is cached: a thread
            return self._off_loop(task, [(0, n, fd, pos)], buf, epoch)
        try:
            if os.preadv(fd, [buf], pos, self.nowait) != n:     # not all in the page cache
                if self.nowait:
                    return self._off_loop(task, [(0, n, fd, pos)], buf, epoch)
                read_full(fd, memoryview(buf), pos)
        except OSError as e:
            if not self._refused(e):
                raise
            return self._off_loop(task, [(0, n, fd, pos)], buf, epoch)
        task.data_in = buf
        self.wv[READS + self.index] += 1
        return None

    def _nowait(self, fd: int, part: memoryview, pos: int) -> bool:
        """Fill ``part`` from the page cache: False when some of it is not there (or the file
        system cannot tell), for a thread to read."""
        n = len(part)
        try:
            got = os.preadv(fd, [part], pos, self.nowait)
        except OSError as e:
            if not self._refused(e):
                raise
            return False
        if got == n:
            return True
        if self.nowait:
            return False
        read_full(fd, part[got:], pos + got)
        return True

    def _refused(self, e: OSError) -> bool:
        """``preadv2(RWF_NOWAIT)`` raised ``e``: True when that means "read it in a thread"
        (the data is not cached, or the file system cannot tell: then never ask again)."""
        if e.errno == errno.EOPNOTSUPP:
            self.nowait = 0
            return True
        return isinstance(e, BlockingIOError)

    def _off_loop(self, task: ScsiTask, mapped: list, buf: bytearray, epoch: int):
        """Read ``mapped`` (the caller's segments of tier files) into ``buf`` in a thread,
        so the event loop serves other commands while the device reads; returns the future
        the fabric awaits.
        The read-side section goes on in an off-loop word (``shared``) set here, inside the
        caller's section, and cleared by the thread when its I/O is done. With every such
        word taken, the read runs here."""
        free = self.free
        if not free:
            view = memoryview(buf)
            for a, b, fd, pos in mapped:
                read_full(fd, view[a:b], pos)
            task.data_in = buf
            self.words[READS + self.index] += 1
            return None
        k = free.pop()
        self.words[k] = epoch
        fut = asyncio.get_running_loop().run_in_executor(
            None, self._read_thread, task, mapped, buf, k)
        fut.add_done_callback(lambda f: self._read_done(task, buf, f))
        return fut

    def _read_thread(self, task: ScsiTask, mapped: list, buf: bytearray, k: int) -> None:
        """In a thread: the reads of ``_off_loop``, then the end of their section (word
        ``k``: 0, and free again). When it starts, the wait for a thread ends: ``t_io``, the
        statistics' queue as in the SCSI core."""
        task.t_io = time.perf_counter()
        try:
            self._pause("thread-read")
            view = memoryview(buf)
            for a, b, fd, pos in mapped:
                read_full(fd, view[a:b], pos)
        finally:
            self.words[k] = 0
            self.free.append(k)

    def _read_done(self, task: ScsiTask, buf: bytearray, fut) -> None:
        """The thread's read ended (before the fabric's callback sees the future): the data
        is the task's. An aborted task's read ends here too; the fabric drops its answer."""
        if not fut.cancelled() and fut.exception() is None:
            task.data_in = buf
            self.words[READS + self.index] += 1

    def _give_back(self, task: ScsiTask):
        task.handler = None
        return self.forward(task)

    def _segments(self, paus: np.ndarray, first: int, offset: int, n: int):
        """(start, end) in the caller's buffer, fd and file offset of each run of AUs that
        are contiguous in one tier file (fd None: unmapped)."""
        au = self.au
        end = offset + n
        run = None
        for i, p in enumerate(paus.tolist()):
            lo = (first + i) * au
            a, b = max(offset, lo) - offset, min(end, lo + au) - offset
            if p == UNMAPPED:
                fd, pos = None, 0
            elif p < self.ncap:
                fd, pos = self.cap_fd, p * au + (a + offset - lo)
            else:
                fd, pos = self.flash_fd, (p - self.fshift) * au + (a + offset - lo)
            if run is not None and run[2] == fd \
                    and (fd is None or run[3] + run[1] - run[0] == pos):
                run[1] = b
                continue
            if run is not None:
                yield tuple(run)
            run = [a, b, fd, pos]
        if run is not None:
            yield tuple(run)

    def _pause(self, what: str) -> None:
        """Test-only (``HOOK_ENV``): while the file ``pause-<what>`` exists in the hook
        directory, stop here (the ownership check done, the I/O not yet), with the file
        ``paused-<what>`` saying so (``thread-read``: in the thread of a read)."""
        if self.hook is None or not (self.hook / f"pause-{what}").exists():
            return
        marker = self.hook / f"paused-{what}"
        marker.touch()
        while (self.hook / f"pause-{what}").exists():
            time.sleep(HOOK_POLL)
        marker.unlink()
