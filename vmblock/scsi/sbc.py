"""SBC-3 command handlers: READ, WRITE, VERIFY, WRITE AND VERIFY, COMPARE AND WRITE, ORWRITE,
WRITE SAME, UNMAP, PRE-FETCH, SYNCHRONIZE CACHE, READ CAPACITY, GET LBA STATUS, READ DEFECT
DATA, START STOP UNIT.

Handlers take ``(target, lu, task, lba, blocks, options)`` with LBA range and transfer length
already checked by ``ScsiTarget.prepare``; ``options`` holds the ``cdb.OPTION_*`` bits, and
the ALLOCATION LENGTH of a data-in command is ``task.cdb_xfer_len``. Small I/O runs inline on
the event loop; large I/O and every flush go to the executor and the handler returns a
coroutine instead of ``None``.
"""

from __future__ import annotations

import asyncio
import struct
import time
from typing import TYPE_CHECKING

import numpy as np

from vmblock.scsi.cdb import (
    OPTION_BYTCHK_COMPARE,
    OPTION_BYTCHK_ONE_BLOCK,
    OPTION_FUA,
    OPTION_IMMED,
    OPTION_NDOB,
    OPTION_UNMAP,
    SANITIZE_HEADER_LEN,
)
from vmblock.scsi.constants import LBA_STATUS_DEALLOCATED, LBA_STATUS_MAPPED
from vmblock.scsi.sense import ScsiError, SenseReason
from vmblock.scsi.task import ScsiTask

if TYPE_CHECKING:
    from vmblock.scsi.lu import LogicalUnit
    from vmblock.scsi.target import ScsiTarget

READ_CAPACITY_10_MAX_LBA = 0xFFFFFFFF
# SBC-3 5.16.2: LBPME / LBPRZ bits of READ CAPACITY(16) byte 14.
RC16_LBPME = 0x80
RC16_LBPRZ = 0x40
# SBC-3 5.8.2: GET LBA STATUS header and descriptor sizes; a bound on descriptors returned.
LBA_STATUS_HEADER_LEN = 8
LBA_STATUS_DESCRIPTOR_LEN = 16
MAX_LBA_STATUS_DESCRIPTORS = 64
MAX_DESCRIPTOR_BLOCKS = 0xFFFFFFFF
# SBC-3 5.28.2: UNMAP parameter list header and descriptor.
UNMAP_HEADER_LEN = 8
UNMAP_DESCRIPTOR_LEN = 16
# WRITE SAME without store support writes this many bytes of replicated block per call.
WRITE_SAME_CHUNK_BYTES = 1024 * 1024
# SBC-3 5.17: READ DEFECT DATA REQ_PLIST / REQ_GLIST echo back as PLISTV / GLISTV.
DEFECT_PLIST = 0x10
DEFECT_GLIST = 0x08
DEFECT_FORMAT_MASK = 0x07
# START STOP UNIT byte 4: POWER CONDITION (bits 7-4; non-zero: START and LOEJ are ignored).
START_STOP_POWER_CONDITION = 0xF0
START_STOP_NO_FLUSH = 0x04
START_STOP_LOEJ = 0x02
START_STOP_START = 0x01
# SANITIZE OVERWRITE parameter list (SBC-3 5.21.2): INVERT, TEST, OVERWRITE COUNT, then the
# INITIALIZATION PATTERN LENGTH (bytes 2-3) and the pattern.
OVERWRITE_INVERT = 0x80
OVERWRITE_TEST = 0x60
OVERWRITE_COUNT_MASK = 0x1F
# A SANITIZE works through the LU in steps of this many bytes, each one durable, and
# reports its progress between them.
SANITIZE_STEP_BYTES = 64 * 1024 * 1024
PROGRESS_SCALE = 65536


def _run(lu: LogicalUnit, fn, *args):
    """Run blocking store work in the LU's executor (never on the event loop)."""
    return asyncio.get_running_loop().run_in_executor(lu.executor, fn, *args)


def _stamped(task: ScsiTask, fn, *args):
    """``fn(*args)`` in an executor thread, stamping when it starts: the executor's queue ends
    there (``ScsiTask.t_io``)."""
    task.t_io = time.perf_counter()
    return fn(*args)


async def _flush(lu: LogicalUnit) -> None:
    await _run(lu, lu.store.flush)


# -- READ (SBC-3 5.10 - 5.14)
def read(t: ScsiTarget, lu: LogicalUnit, task: ScsiTask, lba: int, blocks: int, options: int):
    """READ: small reads inline (when the store can tell, only those it serves without waiting
    for the device), the others in the executor."""
    bs = lu.block_size
    nbytes = blocks * bs
    if not nbytes:
        return None
    buf = bytearray(nbytes)
    if nbytes <= lu.sync_io_bytes:
        nowait = lu.read_nowait
        if nowait is None:
            lu.store.read_into(lba * bs, memoryview(buf))
        elif not nowait(lba * bs, memoryview(buf)):
            return _read_async(lu, task, lba * bs, buf)
        task.data_in = buf
        return None
    return _read_async(lu, task, lba * bs, buf)


async def _read_async(lu: LogicalUnit, task: ScsiTask, offset: int, buf: bytearray) -> None:
    await _run(lu, _stamped, task, lu.store.read_into, offset, memoryview(buf))
    task.data_in = buf


# -- WRITE (SBC-3 5.35 - 5.39)
def write(t: ScsiTarget, lu: LogicalUnit, task: ScsiTask, lba: int, blocks: int, options: int):
    """Write the Data-Out received (all of it, or the whole blocks of a short transfer).

    FUA, or a write-through LU (WCE=0), makes the data durable before status (SBC-3 4.15).
    """
    n = task.data_out_len
    if not n:
        return None
    data = task.data_out[:n]
    durable = options & OPTION_FUA or not lu.write_cache
    if n <= lu.sync_io_bytes:
        lu.store.write(lba * lu.block_size, data)
        return _flush(lu) if durable else None
    return _write_async(lu, task, (lu.store.write, lba * lu.block_size, data), durable)


async def _write_async(lu: LogicalUnit, task: ScsiTask, work: tuple, durable: bool) -> None:
    """Run a store write ``work`` = (fn, *args) in the executor, tracked so COMPARE AND
    WRITE can wait for it; flush afterwards when the write must be durable."""
    fut = _run(lu, _stamped, task, *work)
    lu.pending_writes.add(fut)
    try:
        await fut
    finally:
        lu.pending_writes.discard(fut)
    if durable:
        await _flush(lu)


def write_and_verify(t: ScsiTarget, lu: LogicalUnit, task: ScsiTask, lba: int, blocks: int,
                     options: int):
    """WRITE AND VERIFY (SBC-3 5.40): the verify step is the store accepting the write; a
    file-backed medium has no separate read-back check, and the data is made durable first
    so the verified copy is the one on stable storage."""
    return write(t, lu, task, lba, blocks, OPTION_FUA)


# -- VERIFY (SBC-3 5.33)
def _first_mismatch(medium: bytearray, expect) -> int:
    """Offset of the first byte where ``expect`` differs from ``medium``, or -1."""
    if medium == expect:
        return -1
    diff = np.flatnonzero(np.frombuffer(medium, dtype=np.uint8)
                          != np.frombuffer(expect, dtype=np.uint8))
    return int(diff[0])


def verify(t: ScsiTarget, lu: LogicalUnit, task: ScsiTask, lba: int, blocks: int,
           options: int):
    """BYTCHK=0 has nothing to check on a medium without error recovery; BYTCHK=1 compares the
    Data-Out with the medium, BYTCHK=3 compares one block with every block in the range."""
    if not options & (OPTION_BYTCHK_COMPARE | OPTION_BYTCHK_ONE_BLOCK) or not blocks:
        return None
    bs = lu.block_size
    medium = bytearray(blocks * bs)
    lu.store.read_into(lba * bs, memoryview(medium))
    expect = task.data_out
    if options & OPTION_BYTCHK_COMPARE:
        offset = _first_mismatch(medium, expect[:len(medium)])
    else:
        block = bytes(expect[:bs])
        offset = _first_mismatch(medium, block * blocks)
    if offset >= 0:
        # SBC-3 5.33: INFORMATION = offset of the first miscompared byte in the Data-Out.
        raise ScsiError(SenseReason.MISCOMPARE_DURING_VERIFY, info=offset)
    return None


# -- COMPARE AND WRITE (SBC-3 5.2) and ORWRITE (SBC-3 5.10): read-modify-write commands
def _atomically(lu: LogicalUnit, work, *args):
    """Run ``work`` with no await between its read and its write, and only after every write
    already handed to the executor has finished: atomic against all other writes."""
    if lu.pending_writes:
        return _atomically_later(lu, work, args)
    return work(lu, *args)


async def _atomically_later(lu: LogicalUnit, work, args) -> None:
    while lu.pending_writes:
        await asyncio.wait(list(lu.pending_writes))
    flush = work(lu, *args)
    if flush is not None:
        await flush


def compare_and_write(t: ScsiTarget, lu: LogicalUnit, task: ScsiTask, lba: int, blocks: int,
                      options: int):
    """Compare the first half of Data-Out with the medium; write the second half only if it
    matches, atomically against other writes."""
    if not blocks:
        return None
    return _atomically(lu, _compare_and_write, task, lba, blocks, options)


def _compare_and_write(lu: LogicalUnit, task: ScsiTask, lba: int, blocks: int, options: int):
    bs = lu.block_size
    n = blocks * bs
    medium = bytearray(n)
    lu.store.read_into(lba * bs, memoryview(medium))
    offset = _first_mismatch(medium, task.data_out[:n])
    if offset >= 0:
        raise ScsiError(SenseReason.MISCOMPARE_DURING_VERIFY, info=offset)
    lu.store.write(lba * bs, task.data_out[n:2 * n])
    if options & OPTION_FUA or not lu.write_cache:
        return _flush(lu)
    return None


def orwrite(t: ScsiTarget, lu: LogicalUnit, task: ScsiTask, lba: int, blocks: int,
            options: int):
    """ORWRITE(16): each written block is the medium's block OR the Data-Out block."""
    if not task.data_out_len:
        return None
    return _atomically(lu, _orwrite, task, lba, options)


def _orwrite(lu: LogicalUnit, task: ScsiTask, lba: int, options: int):
    n = task.data_out_len
    medium = bytearray(n)
    lu.store.read_into(lba * lu.block_size, memoryview(medium))
    merged = np.frombuffer(medium, dtype=np.uint8)
    np.bitwise_or(merged, np.frombuffer(task.data_out[:n], dtype=np.uint8), out=merged)
    lu.store.write(lba * lu.block_size, memoryview(medium))
    if options & OPTION_FUA or not lu.write_cache:
        return _flush(lu)
    return None


# -- WRITE SAME (SBC-3 5.42, 5.43)
def write_same(t: ScsiTarget, lu: LogicalUnit, task: ScsiTask, lba: int, blocks: int,
               options: int):
    """Replicate one block (or zeros with NDOB) over the range, or unmap it with UNMAP=1."""
    if not blocks:
        return None
    bs = lu.block_size
    offset, length = lba * bs, blocks * bs
    durable = not lu.write_cache
    # SBC-3 5.42: UNMAP=1 asks for the range to be unmapped, which reads back as zeros
    # (LBPRZ=1) whatever the Data-Out block held, as LIO and tgt do too.
    if options & OPTION_UNMAP:
        work = (lu.store.unmap, offset, length)
    else:
        block = bytes(bs) if options & OPTION_NDOB else bytes(task.data_out[:bs])
        if lu.can_write_same:
            work = (lu.store.write_same, offset, length, memoryview(block))
        else:
            work = (_write_same_by_chunks, lu, offset, length, block)
    if length <= lu.sync_io_bytes:
        work[0](*work[1:])
        return _flush(lu) if durable else None
    return _write_async(lu, task, work, durable)


def _write_same_by_chunks(lu: LogicalUnit, offset: int, length: int, block: bytes) -> None:
    per_chunk = max(WRITE_SAME_CHUNK_BYTES // len(block), 1)
    chunk = memoryview(block * min(per_chunk, length // len(block)))
    end = offset + length
    while offset < end:
        n = min(len(chunk), end - offset)
        lu.store.write(offset, chunk[:n])
        offset += n


# -- UNMAP (SBC-3 5.28)
def unmap(t: ScsiTarget, lu: LogicalUnit, task: ScsiTask, lba: int, blocks: int,
          options: int):
    """Validate the whole parameter list first, then deallocate every range."""
    param = task.data_out[:task.data_out_len] if task.data_out is not None else b""
    if not param:
        return None
    if len(param) < UNMAP_HEADER_LEN:
        raise ScsiError(SenseReason.PARAMETER_LIST_LENGTH_ERROR)
    data_len, desc_len = struct.unpack_from(">HH", param, 0)
    if data_len > len(param) - 2 or desc_len > len(param) - UNMAP_HEADER_LEN:
        raise ScsiError(SenseReason.PARAMETER_LIST_LENGTH_ERROR)
    # a trailing partial descriptor is ignored (SBC-3 5.28.2)
    count = desc_len // UNMAP_DESCRIPTOR_LEN
    if count > lu.max_unmap_descriptors:
        raise ScsiError(SenseReason.INVALID_FIELD_IN_PARAMETER_LIST, field=(2, None),
                        in_cdb=False)
    ranges = []
    total = 0
    for i in range(count):
        pos = UNMAP_HEADER_LEN + i * UNMAP_DESCRIPTOR_LEN
        d_lba, d_blocks = struct.unpack_from(">QI", param, pos)
        if d_lba + d_blocks > lu.num_blocks:
            raise ScsiError(SenseReason.LBA_OUT_OF_RANGE, info=d_lba)
        total += d_blocks
        if total > lu.max_unmap_blocks:
            raise ScsiError(SenseReason.INVALID_FIELD_IN_PARAMETER_LIST, field=(pos + 8, None),
                            in_cdb=False)
        if d_blocks:
            ranges.append((d_lba * lu.block_size, d_blocks * lu.block_size))
    if not ranges:
        return None
    return _unmap_async(lu, ranges)


async def _unmap_async(lu: LogicalUnit, ranges: list[tuple[int, int]]) -> None:
    fut = _run(lu, _unmap_ranges, lu, ranges)
    lu.pending_writes.add(fut)
    try:
        await fut
    finally:
        lu.pending_writes.discard(fut)
    if not lu.write_cache:
        await _flush(lu)


def _unmap_ranges(lu: LogicalUnit, ranges: list[tuple[int, int]]) -> None:
    for offset, length in ranges:
        lu.store.unmap(offset, length)


# -- PRE-FETCH (SBC-3 5.11, 5.12)
def pre_fetch(t: ScsiTarget, lu: LogicalUnit, task: ScsiTask, lba: int, blocks: int,
              options: int):
    """GOOD, not CONDITION MET: the SCSI core has no cache of its own to hold the blocks in
    (SBC-3 5.11 allows GOOD when the cache cannot hold them)."""
    return None


# -- SYNCHRONIZE CACHE (SBC-3 5.22, 5.23)
def synchronize_cache(t: ScsiTarget, lu: LogicalUnit, task: ScsiTask, lba: int, blocks: int,
                      options: int):
    """The store flushes as a whole; the range only had to be valid."""
    return _flush(lu)


# -- START STOP UNIT (SBC-3 5.25)
def start_stop_unit(t: ScsiTarget, lu: LogicalUnit, task: ScsiTask, lba: int, blocks: int,
                    options: int):
    """LOEJ ejects (START=0) or loads (START=1) a removable LU's medium, unless a nexus
    prevents its removal; a fixed medium cannot be stopped or ejected. A stop or an eject
    still flushes the cache unless NO_FLUSH is set, so a host powering down leaves nothing
    volatile behind. A POWER CONDITION other than 0 ignores START and LOEJ (SBC-3 5.25)."""
    flags = task.cdb[4]
    if flags & START_STOP_POWER_CONDITION:
        return None
    if flags & START_STOP_LOEJ and lu.removable:
        if lu.prevent:
            raise ScsiError(SenseReason.MEDIUM_REMOVAL_PREVENTED)
        if flags & START_STOP_START:
            lu.set_medium(True, by=task.nexus)
            return None
        lu.set_medium(False)
    if flags & START_STOP_START or flags & START_STOP_NO_FLUSH:
        return None
    return _flush(lu)


# -- READ CAPACITY (SBC-3 5.15, 5.16)
def read_capacity10(t: ScsiTarget, lu: LogicalUnit, task: ScsiTask, lba: int, blocks: int,
                    options: int):
    """The last LBA (capped at FFFFFFFFh, which says: use READ CAPACITY(16)) and the block size."""
    cdb = task.cdb
    # SBC-3 5.15: PMI=0 with a non-zero LOGICAL BLOCK ADDRESS -> INVALID FIELD IN CDB.
    if not cdb[8] & 0x01 and any(cdb[2:6]):
        raise ScsiError(SenseReason.INVALID_FIELD_IN_CDB, field=(2, None))
    last = min(lu.num_blocks - 1, READ_CAPACITY_10_MAX_LBA)
    task.data_in = struct.pack(">II", last, lu.block_size)
    return None


def read_capacity16(t: ScsiTarget, lu: LogicalUnit, task: ScsiTask, lba: int, blocks: int,
                    options: int):
    """The last LBA, the block size, the logical blocks per physical block exponent and
    LBPME/LBPRZ when the store can unmap (LOWEST ALIGNED LBA 0)."""
    flags = (RC16_LBPME | RC16_LBPRZ) if lu.can_unmap else 0
    data = struct.pack(">QIxBBx16x", lu.num_blocks - 1, lu.block_size,
                       lu.physical_block_exponent, flags)
    task.data_in = data[:task.cdb_xfer_len]
    return None


# -- GET LBA STATUS (SBC-3 5.8)
def get_lba_status(t: ScsiTarget, lu: LogicalUnit, task: ScsiTask, lba: int, blocks: int,
                   options: int):
    """Mapped / deallocated runs from the starting LBA, as many as ALLOCATION LENGTH holds."""
    bs = lu.block_size
    alloc = task.cdb_xfer_len
    room = max((alloc - LBA_STATUS_HEADER_LEN) // LBA_STATUS_DESCRIPTOR_LEN, 1)
    room = min(room, MAX_LBA_STATUS_DESCRIPTORS)
    descs = []
    while lba < lu.num_blocks and len(descs) < room:
        if lu.can_lba_status:
            mapped, length = lu.store.lba_status(lba * bs)
            run = max(length // bs, 1)
        else:
            # without the capability every block is reported mapped, to the end of the LU
            mapped, run = True, lu.num_blocks - lba
        run = min(run, lu.num_blocks - lba, MAX_DESCRIPTOR_BLOCKS)
        status = LBA_STATUS_MAPPED if mapped else LBA_STATUS_DEALLOCATED
        descs.append(struct.pack(">QIB3x", lba, run, status))
        lba += run
    body = b"".join(descs)
    data = struct.pack(">I4x", len(body) + 4) + body
    task.data_in = data[:alloc]
    return None


# -- READ DEFECT DATA (SBC-3 5.17, 5.18)
def read_defect_data10(t: ScsiTarget, lu: LogicalUnit, task: ScsiTask, lba: int, blocks: int,
                       options: int):
    """A virtual medium has no defects: both lists are valid and empty, in the format asked."""
    flags = task.cdb[2] & (DEFECT_PLIST | DEFECT_GLIST | DEFECT_FORMAT_MASK)
    task.data_in = struct.pack(">xBH", flags, 0)[:task.cdb_xfer_len]
    return None


def read_defect_data12(t: ScsiTarget, lu: LogicalUnit, task: ScsiTask, lba: int, blocks: int,
                       options: int):
    """As READ DEFECT DATA(10), with the 12-byte header."""
    flags = task.cdb[1] & (DEFECT_PLIST | DEFECT_GLIST | DEFECT_FORMAT_MASK)
    task.data_in = struct.pack(">xBHI", flags, 0, 0)[:task.cdb_xfer_len]
    return None


# -- WRITE ATOMIC(16) (SBC-4 5.48)
def write_atomic(t: ScsiTarget, lu: LogicalUnit, task: ScsiTask, lba: int, blocks: int,
                 options: int):
    """All of the blocks or none, for readers and after a crash. It runs here, in the owner
    (a worker's fast path claims READ and WRITE only), after every write already in the
    executor, with no await inside, and, while workers could read the LU's maps, with them
    kept off the LU (``lu.quiesce``). A store that can (``AtomicWritable``) writes it out of
    place and remaps it in one locked step: one commit, and readers see the old blocks or
    the new ones; another store gets an ordinary write. FUA or WCE=0 flush before status."""
    if not task.data_out_len:
        return None
    if lu.quiesce is not None:
        return _write_atomic_quiesced(lu, task, lba, options)
    return _atomically(lu, _write_atomic, task, lba, options)


async def _write_atomic_quiesced(lu: LogicalUnit, task: ScsiTask, lba: int, options: int):
    async with lu.quiesce():
        pending = _atomically(lu, _write_atomic, task, lba, options)
        if pending is not None:
            await pending


def _write_atomic(lu: LogicalUnit, task: ScsiTask, lba: int, options: int):
    write = lu.store.write_atomic if lu.can_write_atomic else lu.store.write
    write(lba * lu.block_size, task.data_out[:task.data_out_len])
    if options & OPTION_FUA or not lu.write_cache:
        return _flush(lu)
    return None


# -- SANITIZE (SBC-3 5.21)
def sanitize_overwrite(t: ScsiTarget, lu: LogicalUnit, task: ScsiTask, lba: int, blocks: int,
                       options: int):
    """OVERWRITE: the initialization pattern (inverted on every other pass with INVERT) over
    the whole LU, OVERWRITE COUNT times."""
    param = bytes(task.data_out[:task.data_out_len]) if task.data_out is not None else b""
    n = task.cdb_xfer_len       # the decoder checked it: header and 1 to block size bytes
    if len(param) < n:
        raise ScsiError(SenseReason.PARAMETER_LIST_LENGTH_ERROR)
    count = param[0] & OVERWRITE_COUNT_MASK
    if not count or param[0] & OVERWRITE_TEST:
        raise ScsiError(SenseReason.INVALID_FIELD_IN_PARAMETER_LIST, field=(0, None),
                        in_cdb=False)
    length = struct.unpack_from(">H", param, 2)[0]
    if not length or length > lu.block_size or length != n - SANITIZE_HEADER_LEN:
        raise ScsiError(SenseReason.INVALID_FIELD_IN_PARAMETER_LIST, field=(2, None),
                        in_cdb=False)
    pattern = param[SANITIZE_HEADER_LEN:n]
    block = (pattern * (lu.block_size // length + 1))[:lu.block_size]
    inverted = bytes(b ^ 0xFF for b in block)
    passes = [inverted if param[0] & OVERWRITE_INVERT and i % 2 else block
              for i in range(count)]
    return _start_sanitize(lu, options, _overwrite, passes)


def sanitize_block_erase(t: ScsiTarget, lu: LogicalUnit, task: ScsiTask, lba: int,
                         blocks: int, options: int):
    """BLOCK ERASE: unmap the whole LU (it reads back as zeros, LBPRZ=1; WABEREQ=01b)."""
    return _start_sanitize(lu, options, _block_erase)


def sanitize_exit_failure_mode(t: ScsiTarget, lu: LogicalUnit, task: ScsiTask, lba: int,
                               blocks: int, options: int):
    """EXIT FAILURE MODE: a SANITIZE here never ends in the failure mode (a failed step
    fails the command and leaves the LU usable), so there is nothing to leave."""
    return None


def _start_sanitize(lu: LogicalUnit, options: int, work, *args):
    """Run ``work(lu, report, *args)`` in the executor with ``lu.sanitize_progress`` set, so
    every other command gets NOT READY, SANITIZE IN PROGRESS until it ends. The work goes on
    whatever happens to the command (an ABORT TASK, a reset, the session going away): the
    state is cleared by the work's end, not by the command's. IMMED=1 returns at once."""
    lu.sanitize_progress = 0
    lu.state_changed()

    def report(done: int, total: int) -> None:
        lu.sanitize_progress = done * PROGRESS_SCALE // max(total, 1)

    fut = _run(lu, work, lu, report, *args)

    def ended(_fut) -> None:
        lu.sanitize_progress = None
        lu.state_changed()
    fut.add_done_callback(ended)
    if options & OPTION_IMMED:
        return None
    return _sanitize_done(fut)


async def _sanitize_done(fut) -> None:
    await asyncio.shield(fut)


def _overwrite(lu: LogicalUnit, report, passes: list[bytes]) -> None:
    """Every pass over the whole LU, each step durable, paced to ``lu.sanitize_rate``."""
    total = lu.num_blocks * lu.block_size
    step = SANITIZE_STEP_BYTES // lu.block_size * lu.block_size
    start = time.monotonic()
    for i, block in enumerate(passes):
        for offset in range(0, total, step):
            done = i * total + offset
            report(done, len(passes) * total)
            if lu.sanitize_rate:
                ahead = start + done / lu.sanitize_rate - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
            n = min(step, total - offset)
            if lu.can_write_same:
                lu.store.write_same(offset, n, memoryview(block))
            else:
                _write_same_by_chunks(lu, offset, n, block)
            lu.store.flush()


def _block_erase(lu: LogicalUnit, report) -> None:
    total = lu.num_blocks * lu.block_size
    step = SANITIZE_STEP_BYTES // lu.block_size * lu.block_size
    for offset in range(0, total, step):
        report(offset, total)
        lu.store.unmap(offset, min(step, total - offset))
    lu.store.flush()
