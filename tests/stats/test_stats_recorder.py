"""The accounting point's kernel against a slow twin, the latency buckets, and LU range
splits: an I/O spanning two ranges counts its bytes in each, its command in the first."""

from __future__ import annotations

import time

import numpy as np
import pytest

from vmblock.iscsi.transfer import TaskState
from vmblock.scsi.task import Nexus, ScsiTask
from vmblock.stats import figures
from vmblock.stats import layout as L
from vmblock.stats.arena import StatsArena, rows_view
from vmblock.stats.live import LiveStats, lu_rows_from_json, lu_rows_json
from vmblock.native import stats as stats_kernels
from vmblock.native.stats import KEY, OP_SHIFT, ROW_SHIFT
from vmblock.stats.recorder import COLS, KINDS, REC, StatsRecorder, add_records
from vmblock.stats.rows import LuRows
from support.scsi_rig import BLOCK, MemoryStore, Rig

NEXUS = Nexus("iqn.test:i", 1, "iqn.test:t")


def naive_add(counters: np.ndarray, rec: np.ndarray) -> None:
    """The slow twin of ``add_records``: one record at a time, in plain Python."""
    for row, op, ops, nbytes, t_arr, t_grant, t_exec, t_done, cls, status in rec.tolist():
        row, ops, nbytes = int(row), int(ops), int(nbytes)
        kind = L.KIND_OF_OPCODE[int(op)]
        t_grant = t_grant or t_arr
        t_exec = t_exec or t_grant
        total = int((t_done - t_arr) * 1e6)
        c = counters[row]
        c[L.OPS_OF_KIND[kind]] += ops
        if kind == L.READ:
            c[L.READ_BYTES] += nbytes
        elif kind == L.WRITE:
            c[L.WRITE_BYTES] += nbytes
        else:
            c[L.NCOUNTERS - 1] += nbytes
        c[L.READ_US if kind == L.READ else L.WRITE_US if kind == L.WRITE else L.OTHER_US] += \
            total * ops
        c[L.QUEUE_US] += int((t_grant - t_arr) * 1e6) * ops
        c[L.ERRORS] += ops if status != 0 else 0
        if kind in (L.READ, L.WRITE):
            if kind == L.WRITE:
                c[L.NETWORK_US] += int((t_exec - t_grant) * 1e6) * ops
            svc = int(cls) if kind == L.READ else 0
            c[(L.STORAGE_US, L.FLASH_US, L.FLASH_MISS_US)[svc]] += \
                int((t_done - t_exec) * 1e6) * ops
            c[(L.STORAGE_OPS, L.FLASH_OPS, L.FLASH_MISS_OPS)[svc]] += ops
            if ops:
                mx = L.READ_MAX_US if kind == L.READ else L.WRITE_MAX_US
                c[mx] = max(c[mx], total)
                start = L.READ_HIST if kind == L.READ else L.WRITE_HIST
                c[start + int(L.bucket_of(np.array([total]))[0])] += ops


def test_add_records_matches_its_slow_twin():
    rng = np.random.default_rng(7)
    n = 5000
    t_arr = rng.uniform(1000, 2000, n)
    grant = np.where(rng.integers(0, 2, n) == 1, t_arr + rng.uniform(0, 0.01, n), 0.0)
    t_exec = np.where(rng.integers(0, 4, n) > 0, np.maximum(t_arr, grant) +
                      rng.uniform(0, 0.5, n), 0.0)
    t_done = np.maximum(np.maximum(t_arr, grant), t_exec) + rng.uniform(0, 30, n)
    opcodes = rng.choice([0x28, 0x2A, 0x88, 0x8A, 0x35, 0x42, 0x89, 0x83, 0x12, 0x00], n)
    rec = np.stack([rng.integers(0, 5, n), opcodes, rng.integers(0, 3, n),
                    rng.integers(0, 1 << 20, n), t_arr, grant, t_exec, t_done,
                    rng.integers(0, 3, n), rng.choice([0, 0, 2, 0x28], n)], axis=1)
    assert rec.shape[1] == REC
    fast = np.zeros((5, L.WIDTH), np.int64)
    slow = np.zeros((5, L.WIDTH), np.int64)
    add_records(fast, rec)
    naive_add(slow, rec)
    assert np.array_equal(fast, slow)
    with pytest.raises(ValueError):
        add_records(fast, np.array([[7, 0x28, 1, 0, 0, 0, 0, 0, 0, 0]], np.float64))


def test_add_grouped_matches_the_same_commands_as_records():
    """The grouped kernel (runs of alike commands added at once) against each command
    as its own record: the arrival at or before it, the first send after it, else now.
    Staged as the recorder stages them: a key wherever it changes, then the bytes."""
    rng = np.random.default_rng(11)
    n = 4000
    rows = rng.integers(0, 4, n)
    ops = rng.choice([0x28, 0x2A, 0x88, 0x35], n)
    cls = np.where(ops == 0x28, rng.integers(0, 3, n), 0)
    nbytes = rng.choice([512, 4096, 65536], n)
    packed = rows << ROW_SHIFT | (ops | cls << 8) << OP_SHIFT | nbytes
    packed[: n // 2] = np.sort(packed[: n // 2])        # long runs of alike commands
    rows, ops = packed >> ROW_SHIFT, packed >> OP_SHIFT & 0xFF
    cls, nbytes = packed >> (OP_SHIFT + 8) & 7, packed & 0xFFFFFFFF
    keys = KEY | packed >> OP_SHIFT << OP_SHIFT
    new = np.r_[True, keys[1:] != keys[:-1]]
    start = np.arange(n) + np.cumsum(new) - new         # where each command's items begin
    fast = np.zeros(n + new.sum(), np.int64)
    fast[start[new]] = keys[new]
    fast[start + new] = nbytes
    at = np.sort(rng.choice(n, 300, replace=False))
    at[0] = 0
    arrivals = np.stack([start[at], 10.0 + np.arange(300) * 0.01], axis=1)
    sent = np.sort(rng.choice(n, 200, replace=False))
    sends = np.stack([start[sent], 10.005 + np.sort(rng.uniform(0, 3, 200))], axis=1)
    now = 20.0
    grouped = np.zeros((4, L.WIDTH), np.int64)
    stats_kernels.add_grouped(grouped, fast, arrivals, sends, now, COLS, KINDS)
    i = np.arange(n)
    t_arr = arrivals[np.searchsorted(at, i, side="right") - 1, 1]
    first = np.searchsorted(sent, i, side="right")
    t_done = np.where(first < len(sent), sends[np.minimum(first, len(sent) - 1), 1], now)
    rec = np.stack([rows, ops, np.ones(n), nbytes, t_arr, t_arr, t_arr, t_done, cls,
                    np.zeros(n)], axis=1).astype(np.float64)
    each = np.zeros((4, L.WIDTH), np.int64)
    add_records(each, rec)
    assert np.array_equal(grouped, each)


def test_buckets_hold_their_values_and_percentiles_land_in_them():
    us = np.arange(0, 1 << 16, dtype=np.int64)
    b = L.bucket_of(us)
    lows = np.array([L.bucket_low(int(x)) for x in b])
    highs = np.array([L.bucket_low(int(x) + 1) for x in b])
    assert np.all(lows <= us) and np.all(us < highs)
    hist = np.zeros(L.BUCKETS, np.int64)
    np.add.at(hist, L.bucket_of(np.full(99, 100, np.int64)), 1)
    np.add.at(hist, L.bucket_of(np.array([10_000], np.int64)), 1)
    assert 88 <= figures.percentile(hist, 0.5) <= 112
    assert figures.percentile(hist, 0.999) >= 8192


def _done(rec: StatsRecorder, lr: LuRows, cdb: bytes, nbytes: int, write: bool) -> None:
    task = ScsiTask(0, cdb, NEXUS, read=not write, write=write)
    st = TaskState(None, task, 0, 1)
    st.stats_rows = lr
    st.t_arr = rec.clock()
    st.t_grant, st.t_exec, st.probe = 0.0, 0.0, None
    rec.done(st, task, nbytes)
    rec.sent()


def read10(lba: int, blocks: int) -> bytes:
    return bytes([0x28, 0]) + lba.to_bytes(4, "big") + bytes([0]) + blocks.to_bytes(2, "big") \
        + bytes(1)


def write16(lba: int, blocks: int) -> bytes:
    return bytes([0x8A, 0]) + lba.to_bytes(8, "big") + blocks.to_bytes(4, "big") + bytes(2)


def test_an_io_spanning_two_ranges_is_split_by_range():
    live = LiveStats()
    lr = live.lu_rows("lun")
    vm_a, vm_b = live.row_of("sub-a"), live.row_of("sub-b")
    lr.split([0, 100, 200], [lr.row, vm_a, vm_b])
    rec = live.recorder
    _done(rec, lr, write16(190, 20), 20 * 512, write=True)   # 10 blocks in a, 10 in b
    _done(rec, lr, read10(150, 8), 8 * 512, write=False)     # all in a
    _done(rec, lr, read10(5, 1), 512, write=False)           # the unowned rest
    t = live.totals(["lun", "sub-a", "sub-b"])
    assert t[1, L.WRITE_OPS] == 1 and t[1, L.WRITE_BYTES] == 10 * 512
    assert t[2, L.WRITE_OPS] == 0 and t[2, L.WRITE_BYTES] == 10 * 512
    assert t[1, L.READ_OPS] == 1 and t[1, L.READ_BYTES] == 8 * 512
    assert t[0, L.READ_OPS] == 1 and t[0, L.READ_BYTES] == 512
    assert t[:, L.WRITE_BYTES].sum() == 20 * 512           # sums over rows stay exact
    assert int(t[1, L.WRITE_HIST:L.WRITE_HIST + L.BUCKETS].sum()) == 1
    back = lu_rows_from_json(lu_rows_json(lr))              # as a worker gets it
    assert back.pieces(190, 20, 512) == lr.pieces(190, 20, 512) == [(vm_a, 5120), (vm_b, 5120)]
    live.close()


def test_bad_splits_are_refused():
    lr = LuRows(0)
    for starts, rows in (([5, 10], [1, 2]), ([0, 10, 10], [1, 2, 3]), ([0, 10], [1]), ([], [])):
        with pytest.raises(ValueError):
            lr.split(starts, rows)
    assert lr.starts is None


def test_worker_slabs_are_summed_and_maxima_kept():
    arena = StatsArena(workers=2, rows=16)
    arena.ensure(3)
    views = [rows_view(s) for s in arena.slabs]
    for i, v in enumerate(views):
        v[2, L.READ_OPS] = i + 1
        v[2, L.READ_MAX_US] = 10 * (3 - i)
    t = arena.totals(np.array([2]))
    assert t[0, L.READ_OPS] == 6 and t[0, L.READ_MAX_US] == 30
    arena.close()


def test_commands_of_one_buffer_share_its_arrival_and_their_writes_send():
    """Grouped staging (``arrive`` / ``sent``) gives each command that ran as its buffer was
    read (t_arr None) the time of its buffer and of the first write after its status, across a
    flush inside a buffer; a command that waited (its own t_arr) keeps its own arrival, also
    when it ends while its buffer is still the newest."""
    live = LiveStats()
    rec = live.recorder
    now = [0.0]
    rec.clock = lambda: now[0]
    lr = live.lu_rows("lun")

    def done(t_arr: float | None, cdb: bytes, write: bool = False) -> None:
        task = ScsiTask(0, cdb, NEXUS, read=not write, write=write)
        st = TaskState(None, task, 0, 1)
        st.stats_rows, st.t_arr = lr, t_arr
        st.t_grant, st.t_exec = 0.0, 0.0
        rec.done(st, task, 4096)

    now[0] = 10.0
    first = rec.arrive()
    done(None, read10(0, 8))
    now[0] = 10.001
    rec.sent()                                  # read 1: 1,000 us
    now[0] = 10.002
    done(first, read10(8, 8))                   # waited: its own times, buffer still newest
    now[0] = 10.005
    rec.sent()                                  # read 2: 5,000 us
    now[0] = 20.0
    rec.arrive()
    done(None, write16(0, 8), write=True)
    now[0] = 20.0001
    rec.flush()                                 # write 1, not sent yet: 100 us at the flush
    done(None, write16(8, 8), write=True)
    done(first, read10(16, 8))                  # of the first buffer: its own arrival
    now[0] = 20.003
    rec.sent()                                  # write 2: 3,000 us; read 3: 10,003,000 us
    assert len(rec.fast) == 2 and len(rec.long) == 10       # write 2 and its key; read 3 long
    [t] = live.totals(["lun"])
    assert t[L.READ_OPS] == 3 and t[L.WRITE_OPS] == 2
    assert t[L.READ_BYTES] == t[L.WRITE_BYTES] + 4096 == 3 * 4096
    assert abs(t[L.READ_US] - (1_000 + 5_000 + 10_003_000)) <= 3
    assert abs(t[L.WRITE_US] - (100 + 3_000)) <= 2
    assert abs(t[L.READ_MAX_US] - 10_003_000) <= 1 and abs(t[L.WRITE_MAX_US] - 3_000) <= 1
    assert t[L.QUEUE_US] == 0 and t[L.NETWORK_US] == 0
    reads = t[L.READ_HIST:L.READ_HIST + L.BUCKETS]
    for us in (1_000, 5_000, 10_003_000):
        b = int(L.bucket_of(np.array([us - 1]))[0])   # float rounding may take 1 us off
        assert reads[b] + reads[min(b + 1, L.BUCKETS - 1)] >= 1
    assert reads.sum() == 3
    live.close()


def test_the_executors_queue_counts_as_queue_not_storage():
    """A command whose I/O an executor thread started later (``ScsiTask.t_io``) has that wait
    under queue; a write's network part stays R2T -> last Data-Out."""
    live = LiveStats()
    rec = live.recorder
    now = [0.0]
    rec.clock = lambda: now[0]
    lr = live.lu_rows("lun")

    def done(cdb: bytes, write: bool, t_arr: float, t_grant: float, t_exec: float,
             t_io: float) -> None:
        task = ScsiTask(0, cdb, NEXUS, read=not write, write=write, t_io=t_io)
        st = TaskState(None, task, 0, 1)
        st.stats_rows, st.t_arr, st.t_grant, st.t_exec, st.probe = lr, t_arr, t_grant, t_exec, None
        rec.done(st, task, 1 << 20)

    now[0] = 10.0
    rec.arrive()
    done(read10(0, 2048), False, 10.0, 0.0, 0.0, 12.0)          # 2 s for a thread, 1 s of I/O
    done(write16(0, 2048), True, 10.0, 10.5, 11.0, 12.5)        # budget .5, data .5, thread 1.5
    now[0] = 13.0
    rec.sent()
    [t] = live.totals(["lun"])
    assert t[L.QUEUE_US] == 2_000_000 + 500_000 + 1_500_000
    assert t[L.NETWORK_US] == 500_000
    assert t[L.STORAGE_US] == 1_000_000 + 500_000
    assert t[L.READ_US] == t[L.WRITE_US] == 3_000_000
    live.close()


def test_the_scsi_core_stamps_when_an_executor_thread_starts_the_io():
    """Large reads and writes run in the executor and carry ``t_io``; an inline one does not,
    nor does a small write made durable by a flush after it (the inline write ran first)."""
    rig = Rig(MemoryStore())
    big = rig.lu.sync_io_bytes // BLOCK * 2
    before = time.perf_counter()
    read = rig.run(read10(0, big))
    write = rig.run(write16(0, big), data=bytes(big * BLOCK))
    assert before < read.t_io <= time.perf_counter() and before < write.t_io
    assert read.data_in is not None and len(read.data_in) == big * BLOCK
    assert rig.run(read10(0, 8)).t_io == 0.0
    assert rig.run(write16(0, 8), data=bytes(8 * BLOCK)).t_io == 0.0
    rig.lu.write_cache = False
    assert rig.run(write16(0, 8), data=bytes(8 * BLOCK)).t_io == 0.0
