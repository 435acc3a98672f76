"""The fabric's side of the accounting: a command that waits for nothing inside the target
counts with its receive buffer's group (one packed int, no stamps of its own), and every one
that waits (a CmdSN gap, its Data-Out, an executor) or fails leaves the group with times of
its own, so its wait lands where it belongs. A connection machine piped to a test initiator
(tests/support/pipe.py); the recorder reads a clock that moves by TICK at every reading, so
each figure is a whole number of readings apart."""

from __future__ import annotations

import asyncio

import pytest

from support.initiator_machine import R2T, SCSI_RSP
from support.iscsi_client import read10, tur, write10
from support.pipe import BLOCK, SEGMENT, Pipe, answer, login, service
from vmblock.stats import layout as L
from vmblock.stats.live import LiveStats

TICK = 0.001                # seconds the recorder's clock moves at each reading
TICK_US = 1000


@pytest.fixture
def counted(store):
    """A logged-in pipe whose LUN 0 counts into the row "lun" of a LiveStats."""
    loop = asyncio.new_event_loop()
    pipe = Pipe(service(store), loop)
    login(pipe)
    answer(pipe.send(pipe.initiator.command(tur())), SCSI_RSP)     # the power-on UA
    live = LiveStats()
    clock = [100.0]

    def tick() -> float:
        clock[0] += TICK
        return clock[0]

    live.recorder.clock = tick
    pipe.machine.stats = live.recorder
    pipe.machine.session.target.scsi.stats_rows[0] = live.lu_rows("lun")
    yield pipe, live
    live.close()
    loop.close()


def totals(live: LiveStats):
    [t] = live.totals(["lun"])
    return t


def test_commands_of_one_buffer_are_grouped_with_its_arrival_and_write(counted):
    pipe, live = counted
    ini = pipe.initiator
    rec = live.recorder
    pipe.send(b"".join(ini.command(read10(8 * i, 8), read=8 * BLOCK) for i in range(3)))
    # nothing stamped on any of them: the LU's READ(10) key once, then each one's bytes
    key = pipe.machine.session.target.scsi.stats_rows[0].keys[0x28]
    assert rec.fast == [key] + [8 * BLOCK] * 3 and not rec.long
    t = totals(live)
    assert t[L.READ_OPS] == 3 and t[L.READ_BYTES] == 3 * 8 * BLOCK
    # the clock read twice: as the buffer came, as the answers left
    assert t[L.READ_US] == 3 * TICK_US and t[L.READ_MAX_US] == TICK_US
    assert t[L.STORAGE_US] == 3 * TICK_US and t[L.QUEUE_US] == t[L.ERRORS] == 0


def test_a_command_behind_a_cmdsn_gap_has_its_wait_as_queue(counted):
    pipe, live = counted
    ini = pipe.initiator
    rec = live.recorder
    gap = ini.cmdsn
    assert pipe.send(ini.command(read10(0, 8), read=8 * BLOCK, cmdsn=gap + 1)) == []   # parked
    rsps = pipe.send(ini.command(read10(8, 8), read=8 * BLOCK, cmdsn=gap))
    assert len(rsps) == 2 and len(rec.fast) == 2 and len(rec.long) == 10    # a key, a read
    t = totals(live)
    assert t[L.READ_OPS] == 2
    # its buffer came at reading 1 and it was parked at 2; the second buffer came at 3, the
    # parked one ran at 4, both answers left at 5
    assert t[L.QUEUE_US] == 2 * TICK_US
    assert t[L.READ_US] == 3 * TICK_US + 2 * TICK_US and t[L.READ_MAX_US] == 3 * TICK_US


def test_a_write_waiting_for_its_data_out_has_that_wait_as_network(counted):
    pipe, live = counted
    ini = pipe.initiator
    rec = live.recorder
    n = 2 * SEGMENT
    r2t = answer(pipe.send(ini.command(write10(0, n // BLOCK), write=n, data=bytes(SEGMENT))),
                 R2T)
    assert rec.fast == [] and rec.long == rec.long[:0]      # not ended: nothing staged
    write_itt = ini.itt
    pipe.send(ini.data_out(write_itt, r2t.ttt, SEGMENT, bytes(SEGMENT)))
    assert len(rec.long) == 10 and rec.fast == []
    t = totals(live)
    assert t[L.WRITE_OPS] == 1 and t[L.WRITE_BYTES] == n
    # arrived at reading 1, the R2T left at 2, the Data-Out's buffer came at 3, all of it
    # was in at 4, its answer left at 5
    assert t[L.NETWORK_US] == 3 * TICK_US and t[L.STORAGE_US] == TICK_US
    assert t[L.WRITE_US] == 4 * TICK_US and t[L.QUEUE_US] == 0


def test_a_failed_command_counts_as_an_error_of_its_buffer(counted):
    pipe, live = counted
    ini = pipe.initiator
    rec = live.recorder
    beyond = pipe.machine.session.target.scsi.luns[0].num_blocks
    rsp = answer(pipe.send(ini.command(read10(beyond, 8), read=8 * BLOCK)), SCSI_RSP)
    assert rsp.b3 == 0x02                                   # CHECK CONDITION
    assert rec.fast == [] and len(rec.long) == 10
    t = totals(live)
    assert t[L.READ_OPS] == t[L.ERRORS] == 1 and t[L.READ_US] == TICK_US
