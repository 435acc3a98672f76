"""The workers' shared-memory fast path (docs/workers.md, "The fast path") against a live
``vmblock serve`` with ``server.workers 2`` and no flash cache: READ/WRITE run in the worker
over the owner's shared maps, everything else and every LU with state the owner must see
goes to the owner.

The races of the doc are made certain with the test-only hook (``VMBLOCK_FASTPATH_HOOK``): a
worker stops between its ownership check and its I/O while the file ``pause-write`` (or
``pause-read``) exists in the hook directory, and says so with ``paused-...``; the owner
leaves ``quiescing`` when a wholesale map change starts waiting for the workers. A read of
data not in the page cache runs in a thread of the worker (``pause-thread-read`` stops that
thread; the tests drop the tier files' pages with POSIX_FADV_DONTNEED); the tests read the
shared words (``vmblock.worker.shared``) through the worker's memfd in /proc.
Every wait is a bounded poll for a state, never a sleep a race could beat.
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import numpy as np
import pytest

from support.clients import cli_json
from support.iscsi_client import IscsiClient, read10, tur, write10
from support.server import run_cli
from support.waiting import until
from test_workers import (
    A_INITIATOR,
    B_INITIATOR,
    BLOCK,
    CHECK_CONDITION,
    FUA,
    GOOD,
    LUN_RESET,
    REGISTER,
    RESERVATION_CONFLICT,
    RESERVE,
    UNIT_ATTENTION,
    WRITE_EXCLUSIVE,
    login,
    pattern,
    placed,
    placement,
    pr_out,
    sense_key_asc,
)
from vmblock.iscsi import pdu
from vmblock.scsi.lu import SYNC_IO_BYTES
from vmblock.worker.publish import HOOK_ENV
from vmblock.worker.shared import ACTIVE, EPOCH, OFF_LOOP_SLOTS, WORDS, off_loop

pytestmark = pytest.mark.timeout(180)

AU_BLOCKS = 64 * 1024 // BLOCK      # one allocation unit (the default 64 KiB)
POOL_AUS = 16                       # the capacity tier of the freed-AU test
UNMAP = bytes([0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0])      # SBC-3 5.28, 24 bytes of parameters
SYNC_CACHE = bytes([0x35] + [0] * 9)                    # SYNCHRONIZE CACHE(10)
OFF_LOOP_AUS = SYNC_IO_BYTES // (AU_BLOCKS * BLOCK) + 2  # a read larger than SYNC_IO_BYTES
TIER_FILES = ("capacity", "flash")                      # in the pool directory
ABORT_TASK = 1              # RFC 7143 11.5.1
SHARED_MEMFD = "/memfd:vmblock-fastpath"


def shared_words(pid: int) -> np.ndarray:
    """A copy of the fast path's shared words, read through process ``pid``'s memfd."""
    for fd in os.listdir(f"/proc/{pid}/fd"):
        path = f"/proc/{pid}/fd/{fd}"
        try:
            if os.readlink(path).startswith(SHARED_MEMFD):
                return np.fromfile(path, dtype=np.int64, count=WORDS)
        except FileNotFoundError:       # a descriptor closed meanwhile
            continue
    raise AssertionError(f"no shared words in process {pid}")


def evict(pool: Path) -> None:
    """Drop the tier files' clean pages from the page cache (POSIX_FADV_DONTNEED): data
    written and flushed (SYNCHRONIZE CACHE) is then read from the device, in a thread."""
    for name in TIER_FILES:
        fd = os.open(pool / name, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def sections(pid: int, index: int) -> tuple[int, int, list[int]]:
    """(EPOCH, worker ``index``'s loop section word, its open off-loop section words)."""
    w = shared_words(pid)
    start = off_loop(index)
    return (int(w[EPOCH]), int(w[ACTIVE + index]),
            [int(e) for e in w[start:start + OFF_LOOP_SLOTS] if e])


def unmap_params(lba: int, blocks: int) -> bytes:
    """UNMAP parameter list with one block descriptor (SBC-3 5.28.2)."""
    return (b"\x00\x16\x00\x10" + bytes(4) + lba.to_bytes(8, "big")
            + blocks.to_bytes(4, "big") + bytes(4))


@pytest.fixture
def hook(tmp_path, monkeypatch) -> Path:
    """The hook directory the server and its workers see."""
    d = tmp_path / "hook"
    d.mkdir()
    monkeypatch.setenv(HOOK_ENV, str(d))
    return d


@pytest.fixture
def fast_server(tmp_path, start_server, hook):
    """``server.workers 2``, no flash cache (the fast path's configuration)."""
    pool = tmp_path / "pool"
    run_cli(pool, "config", "set", "server.workers", "2")
    run_cli(pool, "config", "set", "cache.size", "0")
    return start_server(pool=pool)


def fast_counts(server) -> dict[int, dict[str, int]]:
    """Worker index -> its fast-path READ and WRITE counts (``session list``)."""
    out = {}
    for s in cli_json(server, "session", "list"):
        for conn in s["connections"]:
            if "worker_fast" in conn:
                out[conn["worker"]] = conn["worker_fast"]
    return out


def fua_write10(lba: int, blocks: int) -> bytes:
    """WRITE(10) with FUA."""
    cdb = bytearray(write10(lba, blocks))
    cdb[1] |= FUA
    return bytes(cdb)


def in_thread(fn, *args):
    """Run ``fn(*args)`` in a thread; the returned dict gets ``result`` (or ``error``)."""
    box: dict = {}

    def run():
        try:
            box["result"] = fn(*args)
        except BaseException as e:       # reported by the test that joins it
            box["error"] = e
    t = threading.Thread(target=run, daemon=True)
    t.start()
    box["thread"] = t
    return box


def joined(box: dict):
    """The result of an ``in_thread`` call, once it ended."""
    box["thread"].join(60)
    assert not box["thread"].is_alive()
    if "error" in box:
        raise box["error"]
    return box["result"]


def test_fast_path_data_reads_back_in_the_other_worker_and_after_restart(fast_server):
    s = fast_server
    a, b = login(s, A_INITIATOR), login(s, B_INITIATOR)
    with a, b:
        (wa, _), (wb, _) = placed(s, a, b)
        assert wa != wb
        first = pattern(1, 2 * AU_BLOCKS)
        assert a.scsi(write10(0, 2 * AU_BLOCKS), write=first).status == GOOD   # allocates
        before = fast_counts(s)
        data = pattern(9, 24)
        assert a.scsi(write10(40, 24), write=data).status == GOOD        # in place, 2 AUs
        assert a.scsi(fua_write10(200, 8), write=pattern(5, 8)).status == GOOD   # forwarded
        r = b.scsi(read10(40, 24), read_len=len(data))
        assert r.status == GOOD and r.data == data
        r = b.scsi(read10(5000, 8), read_len=8 * BLOCK)                 # unmapped: zeros
        assert r.status == GOOD and r.data == bytes(8 * BLOCK)
        after = fast_counts(s)
        assert after[wa]["writes"] - before[wa]["writes"] == 1
        assert after[wb]["reads"] - before[wb]["reads"] == 2
    s.stop()
    s2 = type(s)(s.pool)
    try:
        c = login(s2, A_INITIATOR)
        with c:
            expect = bytearray(first)
            expect[40 * BLOCK:64 * BLOCK] = data
            expect[200 * BLOCK:208 * BLOCK] = pattern(5, 8)
            r = c.scsi(read10(0, 2 * AU_BLOCKS), read_len=len(expect))
            assert r.status == GOOD and r.data == bytes(expect)
    finally:
        s2.stop()


def test_snapshot_waits_for_an_in_place_write_that_checked_ownership(fast_server, hook):
    s = fast_server
    a = login(s, A_INITIATOR)
    with a:
        placed(s, a)
        old = pattern(3, 8)
        assert a.scsi(write10(16, 8), write=old).status == GOOD          # allocates
        (hook / "pause-write").touch()
        new = pattern(77, 8)
        write = in_thread(a.scsi, write10(16, 8), 0, new)
        until("the write paused after its ownership check",
                 lambda: (hook / "paused-write").exists())
        snap = in_thread(s.cli, "vm", "snapshot", "demo", "--name", "s1")
        until("the snapshot waiting for the worker", lambda: (hook / "quiescing").exists())
        assert snap["thread"].is_alive()     # it cannot end while the write is in its section
        (hook / "pause-write").unlink()
        assert joined(write).status == GOOD
        joined(snap)
        # the write landed before the snapshot: the snapshot has it; later writes do not
        # change the snapshot (they copy on write in the owner)
        assert a.scsi(write10(16, 8), write=pattern(200, 8)).status == GOOD
    s.cli("vm", "clone", "demo", "--snapshot", "s1", "--name", "c1")
    url = cli_json(s, "vm", "show", "c1")["vdisks"][0]["url"]
    lun = int(url.rsplit("/", 1)[1])
    c = login_url(s, url, lun)
    with c:
        r = c.scsi(read10(16, 8), read_len=8 * BLOCK, lun=lun)
        assert r.status == GOOD and r.data == new


def login_url(server, url: str, lun: int) -> IscsiClient:
    """A raw session on the target of a vdisk URL (iscsi://host:port/target/lun) whose
    unit attention on ``lun`` is taken."""
    target = url.split("/")[3]
    c = IscsiClient(server.host, server.port)
    assert c.login(target, initiator=A_INITIATOR, chap=server.chap(target)).login_status == 0
    while c.scsi(tur(), lun=lun).status != GOOD:
        pass
    return c


def test_freed_au_not_reused_while_a_worker_reads_it(tmp_path, start_server, hook):
    pool = tmp_path / "pool"
    for key, value in (("server.workers", "2"), ("cache.size", "0"),
                       ("store.capacity_size", str(POOL_AUS * AU_BLOCKS * BLOCK))):
        run_cli(pool, "config", "set", key, value)
    s = start_server(pool=pool)
    a, b = login(s, A_INITIATOR), login(s, B_INITIATOR)
    with a, b:
        (wa, _), (wb, _) = placed(s, a, b)
        assert wa != wb
        full = pattern(11, POOL_AUS * AU_BLOCKS)        # every AU of the pool
        assert a.scsi(write10(0, POOL_AUS * AU_BLOCKS), write=full).status == GOOD
        (hook / "pause-read").touch()
        read = in_thread(b.scsi, read10(0, AU_BLOCKS), AU_BLOCKS * BLOCK)
        until("the read paused after its lookup", lambda: (hook / "paused-read").exists())
        # the AU it looked up goes (UNMAP through the owner, committed) ...
        assert a.scsi(UNMAP, write=unmap_params(0, AU_BLOCKS)).status == GOOD
        assert a.scsi(SYNC_CACHE).status == GOOD
        # ... and stays unallocatable while the read is in flight: the pool is full
        far = 1000 * AU_BLOCKS
        r = a.scsi(write10(far, 8), write=pattern(5, 8))
        assert r.status == CHECK_CONDITION
        (hook / "pause-read").unlink()
        r = joined(read)
        # what was mapped when it looked up, or the zeros of the punched AU (the read and
        # the UNMAP raced): never another vdisk's data
        assert r.status == GOOD and r.data in (full[:AU_BLOCKS * BLOCK], bytes(AU_BLOCKS * BLOCK))
        # the read is over: the AU is allocatable again
        assert a.scsi(write10(far, 8), write=pattern(5, 8)).status == GOOD
        r = b.scsi(read10(far, 8), read_len=8 * BLOCK)
        assert r.status == GOOD and r.data == pattern(5, 8)


def test_unit_attention_after_lun_reset_reaches_a_fast_path_session(fast_server):
    s = fast_server
    a, b = login(s, A_INITIATOR), login(s, B_INITIATOR)
    with a, b:
        (wa, _), (wb, _) = placed(s, a, b)
        assert wa != wb
        assert a.scsi(write10(0, 8), write=pattern(1, 8)).status == GOOD
        assert b.scsi(read10(0, 8), read_len=8 * BLOCK).status == GOOD
        assert a.tmf(LUN_RESET, lun=0).b2 == 0
        r = b.scsi(read10(0, 8), read_len=8 * BLOCK)    # a READ, not forwarded before
        assert r.status == CHECK_CONDITION
        assert sense_key_asc(r) == (UNIT_ATTENTION, 0x29, 0x03)
        assert b.scsi(read10(0, 8), read_len=8 * BLOCK).status == GOOD
        assert a.scsi(write10(0, 8), write=pattern(1, 8)).status == CHECK_CONDITION


def test_a_reset_never_aborts_in_another_worker_a_command_sent_after_its_answer(fast_server,
                                                                               hook):
    """The owner's ABORT reaches the other worker after that worker took b's next command
    (the hook holds it until a command is taken, as when the command's bytes are read first):
    that command, sent on the reset's answer, is answered, with the reset's unit attention."""
    s = fast_server
    a, b = login(s, A_INITIATOR), login(s, B_INITIATOR)
    with a, b:
        (wa, _), (wb, _) = placed(s, a, b)
        assert wa != wb
        assert b.scsi(read10(0, 8), read_len=8 * BLOCK).status == GOOD
        (hook / "hold-abort").touch()
        assert a.tmf(LUN_RESET, lun=0).b2 == 0
        r = b.scsi(read10(0, 8), read_len=8 * BLOCK)
        assert r.status == CHECK_CONDITION
        assert sense_key_asc(r) == (UNIT_ATTENTION, 0x29, 0x03)
        assert b.scsi(read10(0, 8), read_len=8 * BLOCK).status == GOOD


def test_reservation_conflict_from_another_worker(fast_server):
    s = fast_server
    a, b = login(s, A_INITIATOR), login(s, B_INITIATOR)
    with a, b:
        (wa, _), (wb, _) = placed(s, a, b)
        assert wa != wb
        assert b.scsi(write10(0, 8), write=pattern(1, 8)).status == GOOD
        assert b.scsi(write10(0, 8), write=pattern(2, 8)).status == GOOD     # in place
        for action, rtype in ((REGISTER, 0), (RESERVE, WRITE_EXCLUSIVE)):
            cdb, params = pr_out(action, 0xA if action != REGISTER else 0,
                                 0xA if action == REGISTER else 0, rtype)
            assert a.scsi(cdb, write=params).status == GOOD
        assert b.scsi(write10(0, 8), write=pattern(3, 8)).status == RESERVATION_CONFLICT
        r = a.scsi(read10(0, 8), read_len=8 * BLOCK)
        assert r.status == GOOD and r.data == pattern(2, 8)


def test_killed_worker_mid_write_loses_no_flushed_or_fua_write(fast_server, hook):
    s = fast_server
    a = login(s, A_INITIATOR)
    (wa, pid_a), = placed(s, a)
    assert a.scsi(write10(0, 4 * AU_BLOCKS), write=pattern(0, 4 * AU_BLOCKS)).status == GOOD
    assert a.scsi(SYNC_CACHE).status == GOOD
    before = fast_counts(s)[wa]["writes"]
    written = {}
    for i in range(1, 17):      # in place in the worker, then flushed (from LBA 8: the
        data = pattern(i * 13, 8)     # label sectors 0-3 are the owner's, docs/datastores.md)
        assert a.scsi(write10(8 * i, 8), write=data).status == GOOD
        written[8 * i] = data
    assert fast_counts(s)[wa]["writes"] - before == 16
    assert a.scsi(SYNC_CACHE).status == GOOD
    for i in range(4):                           # FUA: forwarded, each GOOD is durable
        data = pattern(i * 7 + 1, 8)
        assert a.scsi(fua_write10(256 + 8 * i, 8), write=data).status == GOOD
        written[256 + 8 * i] = data
    (hook / "pause-write").touch()
    in_thread(a.scsi, write10(200, 8), 0, pattern(99, 8))
    until("a write in the worker", lambda: (hook / "paused-write").exists())
    os.kill(pid_a, signal.SIGKILL)
    assert a.closed_by_peer()
    a.close()
    (hook / "pause-write").unlink()
    until("the killed worker's session gone", lambda: a.tsih not in placement(s))
    s.proc.send_signal(signal.SIGKILL)            # and the owner: no orderly flush at all
    s.proc.wait()
    s2 = type(s)(s.pool)
    try:
        c = login(s2, B_INITIATOR)
        with c:
            for lba, data in written.items():
                r = c.scsi(read10(lba, 8), read_len=len(data))
                assert r.status == GOOD and r.data == data
    finally:
        s2.stop()


def session_on(server, worker: int, initiator: str) -> IscsiClient:
    """A session of ``initiator`` placed on ``worker`` (new logins alternate between the two
    workers: at most two are needed)."""
    for _ in range(2):
        c = login(server, initiator)
        (w, _), = placed(server, c)
        if w == worker:
            return c
        c.close()
    raise AssertionError(f"no session placed on worker {worker}")


def small_pool_server(tmp_path, start_server):
    """``server.workers 2``, no cache, a capacity tier of ``POOL_AUS`` AUs."""
    pool = tmp_path / "pool"
    for key, value in (("server.workers", "2"), ("cache.size", "0"),
                       ("store.capacity_size", str(POOL_AUS * AU_BLOCKS * BLOCK))):
        run_cli(pool, "config", "set", key, value)
    return start_server(pool=pool)


def test_a_read_in_a_worker_thread_holds_its_section_until_its_io_ends(tmp_path,
                                                                        start_server, hook):
    """A read of data not in the page cache runs in a thread: its section outlives the
    command's ``execute`` in an off-loop word (the epoch it started in), while the worker's
    loop runs other commands in sections of their own; an AU freed meanwhile is not reused
    until the thread's I/O is done, and the read is byte-exact (larger than SYNC_IO_BYTES:
    several AUs, one ``preadv`` of the coalesced run)."""
    s = small_pool_server(tmp_path, start_server)
    a, b = login(s, A_INITIATOR), login(s, B_INITIATOR)
    with a, b:
        (wa, _), (wb, pid_b) = placed(s, a, b)
        assert wa != wb
        c = session_on(s, wb, "iqn.2026-11.test:c")      # another session of b's worker
        with c:
            full = pattern(11, POOL_AUS * AU_BLOCKS)        # every AU of the pool
            assert a.scsi(write10(0, POOL_AUS * AU_BLOCKS), write=full).status == GOOD
            assert a.scsi(SYNC_CACHE).status == GOOD
            evict(s.pool)
            n = OFF_LOOP_AUS * AU_BLOCKS * BLOCK
            assert n > SYNC_IO_BYTES
            (hook / "pause-thread-read").touch()
            read = in_thread(b.scsi, read10(0, OFF_LOOP_AUS * AU_BLOCKS), n)
            until("the read paused in its thread", lambda: (hook / "paused-thread-read").exists())
            epoch, loop_word, held = sections(pid_b, wb)
            assert loop_word == 0 and len(held) == 1 and 0 < held[0] <= epoch
            # the loop is free: c's read (unmapped: zeros) runs in it, in a section of its
            # own, and leaves the thread's word alone
            r = c.scsi(read10(2000 * AU_BLOCKS, 8), read_len=8 * BLOCK)
            assert r.status == GOOD and r.data == bytes(8 * BLOCK)
            assert sections(pid_b, wb)[1:] == (0, held)
            # the first AU it looked up goes (UNMAP through the owner, committed) ...
            assert a.scsi(UNMAP, write=unmap_params(0, AU_BLOCKS)).status == GOOD
            assert a.scsi(SYNC_CACHE).status == GOOD
            epoch_after, _, still = sections(pid_b, wb)
            assert still == held and epoch_after > held[0]   # the oldest epoch stays shown
            # ... and stays unallocatable while the thread reads: the pool is full
            far = 1000 * AU_BLOCKS
            assert a.scsi(write10(far, 8), write=pattern(5, 8)).status == CHECK_CONDITION
            (hook / "pause-thread-read").unlink()
            r = joined(read)
            au = AU_BLOCKS * BLOCK
            # the punched AU: what was mapped at the lookup or zeros; the rest byte-exact
            assert r.status == GOOD and r.data[:au] in (full[:au], bytes(au))
            assert r.data[au:] == full[au:n]
            until("the thread's section ended", lambda: not sections(pid_b, wb)[2])
            assert a.scsi(write10(far, 8), write=pattern(5, 8)).status == GOOD
            r = c.scsi(read10(far, 8), read_len=8 * BLOCK)
            assert r.status == GOOD and r.data == pattern(5, 8)


def test_a_task_aborted_while_a_thread_reads_it_gets_no_answer(fast_server, hook):
    """ABORT TASK of a READ whose data a worker's thread is reading (not in the page cache):
    the TMF is answered at once, the read keeps its section to its end, then nothing is sent
    for the task and the connection goes on."""
    s = fast_server
    a = login(s, A_INITIATOR)
    with a:
        (wa, pid_a), = placed(s, a)
        blocks = OFF_LOOP_AUS * AU_BLOCKS
        data = pattern(21, blocks)
        assert a.scsi(write10(0, blocks), write=data).status == GOOD
        assert a.scsi(SYNC_CACHE).status == GOOD
        evict(s.pool)
        (hook / "pause-thread-read").touch()
        itt, cmdsn = a.next_itt(), a.cmdsn
        a.send_pdu(pdu.build_scsi_cmd(pdu.FLAG_FINAL | pdu.CMD_FLAG_READ | 1, pdu.encode_lun(0),
                                      itt, blocks * BLOCK, cmdsn, a.exp_statsn,
                                      read10(0, blocks)))
        a.cmdsn = (a.cmdsn + 1) & 0xFFFFFFFF
        until("the read paused in its thread", lambda: (hook / "paused-thread-read").exists())
        assert len(sections(pid_a, wa)[2]) == 1
        assert a.tmf(ABORT_TASK, ref_itt=itt, ref_cmdsn=cmdsn).b2 == 0    # function complete
        (hook / "pause-thread-read").unlink()
        until("the aborted read's section ended", lambda: not sections(pid_a, wa)[2])
        # the next command's answer is the first PDU: nothing came for the aborted task
        r = a.scsi(read10(0, blocks), read_len=blocks * BLOCK)
        assert r.status == GOOD and r.data == data
        assert not a.stray
        assert placed(s, a) == [(wa, pid_a)]           # the same worker, alive

