"""The QoS gate wired into the real connection machine (no socket): commands of a limited
VM are parked and released by the gate's clock, which the test moves; another VM's LUN on
the same connection is answered meanwhile; with shares, commands leave in dispatch rounds of
``slots`` commands in tag order (3:1). Counts, never rates."""

from __future__ import annotations

import asyncio

import pytest
from support.initiator_machine import DATA_IN
from support.iscsi_client import read10, tur, write10
from support.pipe import Pipe, login
from support.scsi_rig import MemoryStore

from vmblock.iscsi.portal import IscsiConfig, IscsiService, TargetEntry
from vmblock.qos.gate import QosGate
from vmblock.qos.scheduler import QosParams
from vmblock.scsi.lu import LogicalUnit
from vmblock.scsi.target import ScsiTarget

TARGET = "iqn.2026-11.io.vmblock:qos"
T0 = 5000.0
OPERATIONAL = {"HeaderDigest": "None", "DataDigest": "None",
               "MaxRecvDataSegmentLength": "262144", "InitialR2T": "No",
               "ImmediateData": "Yes", "FirstBurstLength": "65536",
               "MaxBurstLength": "262144", "MaxOutstandingR2T": "1"}


class Rig(Pipe):
    """A logged-in connection machine on two LUNs (two VMs) and a gate on a test clock."""

    def __init__(self, slots: int = 8):
        self.timers: list = []              # [when, callback] the gate asked for
        scsi = ScsiTarget(TARGET, tpgt=1)
        for lun in (0, 1):
            lu = LogicalUnit(MemoryStore(), name=f"lu{lun}", serial=f"{lun:016x}",
                             naa=0x6001405A0B1C2D30 + lun)
            lu.sync_io_bytes = 0            # every READ is work the fabric awaits
            scsi.add_lun(lun, lu)
        svc = IscsiService({TARGET: TargetEntry(TARGET, scsi, chap=None)}, IscsiConfig())
        svc.budget.call_soon = lambda callback: None
        svc.bound_portals = [("192.0.2.10", 3260)]
        self.gate = QosGate(self.call_later, slots, burst=0, catchup=0)
        self.gate.clock = lambda: self.now
        svc.qos = self.gate
        super().__init__(svc, asyncio.new_event_loop(), now=T0)
        login(self, OPERATIONAL, target=TARGET)
        for lun in (0, 1):      # the power-on UNIT ATTENTIONs
            self.send(self.initiator.command(tur(), lun=lun))

    def call_later(self, delay: float, callback):
        entry = [self.now + delay, callback]
        self.timers.append(entry)
        return Handle(self.timers, entry)

    def advance(self, seconds: float) -> list:
        """Move the clock; run the gate's timers that are due."""
        self.now += seconds
        for entry in sorted(self.timers, key=lambda e: e[0]):
            if entry in self.timers and entry[0] <= self.now:
                self.timers.remove(entry)
                entry[1]()
        return self.send(b"")


class Handle:
    """What ``call_later`` returns: ``cancel`` drops the timer."""

    def __init__(self, timers: list, entry: list):
        self.timers, self.entry = timers, entry

    def cancel(self) -> None:
        if self.entry in self.timers:
            self.timers.remove(self.entry)


def reads(rig: Rig, lun: int, n: int) -> tuple[bytes, list[int]]:
    cmds, itts = [], []
    for i in range(n):
        cmds.append(rig.initiator.command(read10(i * 8, 8), read=4096, lun=lun))
        itts.append(rig.initiator.itt)
    return b"".join(cmds), itts


def answered(pdus) -> list[int]:
    """ITTs of the READs whose status came (in a Data-In, collapsed)."""
    return [p.itt for p in pdus if p.opcode == DATA_IN and p.flags & 0x01]


@pytest.fixture
def rig():
    r = Rig()
    yield r
    r.loop.close()


def test_a_limited_vm_is_released_by_its_tags_and_the_other_lun_is_not_held(rig):
    rig.gate.configure({"vm-a": QosParams(limit=4)}, {(TARGET, 0): "vm-a", (TARGET, 1): "vm-b"})
    data_a, itts_a = reads(rig, 0, 9)
    data_b, itts_b = reads(rig, 1, 3)
    got = answered(rig.send(data_a + data_b))
    assert got == [itts_a[0], *itts_b]           # one of A at once; B not behind A's queue
    assert answered(rig.advance(0.2)) == []      # A's next tag is at T0 + 0.25
    assert answered(rig.advance(0.05)) == [itts_a[1]]
    got = answered(rig.advance(1.0))             # 4 a second
    assert got == itts_a[2:6]
    rig.gate.configure({"vm-a": QosParams(limit=1000)}, {(TARGET, 0): "vm-a"})
    assert answered(rig.advance(0.003)) == itts_a[6:]     # raised: the rest go at once
    assert rig.gate.inflight == 0 and rig.gate.sched.queued == 0


def test_8k_normalization_64k_writes_cost_8(rig):
    rig.gate.configure({"vm-a": QosParams(limit=80)}, {(TARGET, 0): "vm-a"})
    data = b"".join(rig.initiator.command(write10(i * 128, 128), write=65536, data=bytes(65536),
                                    lun=0) for i in range(25))
    done = [p for p in rig.send(data) if p.opcode == 0x21]
    assert len(done) == 1
    done = [p for p in rig.advance(1.001) if p.opcode == 0x21]
    assert len(done) == 10                       # 80 units a second: 10 commands of 64 KiB


def test_with_one_slot_queued_commands_leave_in_share_order():
    rig = Rig(slots=1)
    try:
        rig.gate.configure({"vm-a": QosParams(weight=3), "vm-b": QosParams(weight=1)},
                           {(TARGET, 0): "vm-a", (TARGET, 1): "vm-b"})
        data_a, itts_a = reads(rig, 0, 40)
        data_b, itts_b = reads(rig, 1, 40)
        got = answered(rig.send(data_a + data_b))
        assert got == []                         # all queued: they go in dispatch rounds
        rounds = 0
        while rig.gate.sched.queued:
            got += answered(rig.advance(0))      # one round of one command (slots=1)
            rounds += 1
        assert rounds == 80 and len(got) == 80
        first = got[:40]
        assert sum(1 for i in first if i in itts_a) == 30
        assert sum(1 for i in first if i in itts_b) == 10
        assert rig.gate.inflight == 0
    finally:
        rig.loop.close()


def test_unconfigured_vms_pass_untouched(rig):
    rig.gate.configure({"vm-a": QosParams(limit=1)}, {(TARGET, 0): "vm-a", (TARGET, 1): "vm-b"})
    assert rig.gate.keys == {(TARGET, 0): "vm-a"}       # only limits: B is not scheduled
    rig.gate.configure({}, {(TARGET, 0): "vm-a", (TARGET, 1): "vm-b"})
    assert not rig.gate.active
    data, itts = reads(rig, 0, 5)
    assert answered(rig.send(data)) == itts


def test_a_parked_command_of_a_closed_connection_is_dropped(rig):
    rig.gate.configure({"vm-a": QosParams(limit=1)}, {(TARGET, 0): "vm-a"})
    data, _ = reads(rig, 0, 3)
    rig.send(data)
    rig.machine.connection_lost()
    rig.advance(10.0)
    assert rig.gate.inflight == 0 and rig.gate.sched.queued == 0


def test_held_at_the_limit_over_a_minute_is_reported_once(rig):
    rig.gate.configure({"vm-a": QosParams(limit=1)}, {(TARGET, 0): "vm-a"})
    data, _ = reads(rig, 0, 100)
    rig.send(data)
    rig.advance(30.0)
    assert rig.gate.throttled(rig.now, 60) == []
    rig.advance(31.0)
    assert rig.gate.throttled(rig.now, 60) == ["vm-a"]
    rig.advance(1.0)
    assert rig.gate.throttled(rig.now, 60) == []         # once per stretch


def test_a_vm_that_went_idle_after_its_limit_held_it_is_not_reported(rig):
    rig.gate.configure({"vm-a": QosParams(limit=1)}, {(TARGET, 0): "vm-a"})
    data, _ = reads(rig, 0, 3)
    rig.send(data)
    rig.advance(5.0)                                      # all three released: idle since
    assert rig.gate.sched.queued == 0
    rig.advance(61.0)
    assert rig.gate.throttled(rig.now, 60) == []
