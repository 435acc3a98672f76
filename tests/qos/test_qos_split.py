"""QoS on a shared datastore LU (issue 13): one LU, LBA runs owned by different VMs
(``vmblock.qos.split.LuSplit``). A command goes to the flow of the VM owning its first LBA:
a limited VM's LV is held by its tags while another VM's LV and the LU's own runs on the same
LU are answered at once. The gate is the real one in the real connection machine
(``test_qos_gate.Rig``), on the test's clock. Counts, never rates."""

from __future__ import annotations

import pytest
from support.iscsi_client import read10
from test_qos_gate import TARGET, Rig, answered

from vmblock.qos.scheduler import QosParams
from vmblock.qos.split import LuSplit

MiB = 1 << 20
KiB512 = 512 << 10
BS = 512


def test_ranges_become_runs_of_lbas():
    # LVs of VM a at 1-3 MiB and 5-6 MiB, of b at 3-4 MiB, an unassigned one at 7-8 MiB
    split = LuSplit.of_ranges([(1 * MiB, 3 * MiB, "a"), (3 * MiB, 4 * MiB, "b"),
                               (5 * MiB, 6 * MiB, "a"), (7 * MiB, 8 * MiB, None)], BS, "host")
    assert split == LuSplit((0, 2048, 6144, 8192, 10240, 12288),
                            ("host", "a", "b", "host", "a", "host"))
    assert split.key_at(read10(2047, 1)) == "host"
    assert split.key_at(read10(2048, 1)) == "a"
    assert split.key_at(read10(6143, 8)) == "a"        # spans a|b: the first LBA's run
    assert split.key_at(read10(6144, 1)) == "b"
    assert split.key_at(read10(10240, 8)) == "a"
    assert split.key_at(bytes(6)) == "host"            # TEST UNIT READY: no LBA
    assert split.flows() == {"host", "a", "b"}
    assert LuSplit.load(split.dump()) == split
    # every LV the LU's own VM's, or no VM at all: no split
    assert LuSplit.of_ranges([(MiB, 2 * MiB, "host")], BS, "host") == "host"
    assert LuSplit.of_ranges([(MiB, 2 * MiB, None)], BS, None) is None
    with pytest.raises(ValueError):
        LuSplit((1, 5), ("a", "b"))


@pytest.fixture
def rig():
    r = Rig()
    yield r
    r.loop.close()


def reads_at(rig: Rig, lbas: list[int]) -> tuple[bytes, list[int]]:
    cmds, itts = [], []
    for lba in lbas:
        cmds.append(rig.initiator.command(read10(lba, 8), read=4096, lun=0))
        itts.append(rig.initiator.itt)
    return b"".join(cmds), itts


def test_a_limited_vms_lv_is_held_and_the_rest_of_the_lu_is_not(rig):
    # the rig's LU has 2 MiB: A's LV at 512 KiB-1 MiB, B's at 1-1.5 MiB
    split = LuSplit.of_ranges([(KiB512, MiB, "vm-a"), (MiB, MiB + KiB512, "vm-b")], BS,
                              "vm-host")
    rig.gate.configure({"vm-a": QosParams(limit=4)}, {(TARGET, 0): split})
    assert set(rig.gate.sched.flows) == {"vm-a"}        # only limits: only A is scheduled
    data_a, itts_a = reads_at(rig, [1024 + 8 * i for i in range(5)])
    data_b, itts_b = reads_at(rig, [2048 + 8 * i for i in range(3)])
    data_h, itts_h = reads_at(rig, [0, 8])
    got = answered(rig.send(data_a + data_b + data_h))
    assert got == [itts_a[0], *itts_b, *itts_h]       # one of A at once; B and the rest pass
    assert answered(rig.advance(0.2)) == []            # A's next tag is at T0 + 0.25
    assert answered(rig.advance(0.05)) == [itts_a[1]]
    assert answered(rig.advance(1.0)) == itts_a[2:]
    assert rig.gate.inflight == 0 and rig.gate.sched.queued == 0


def test_a_worker_gate_gets_the_split_from_the_owners_description(rig):
    split = LuSplit.of_ranges([(KiB512, MiB, "vm-a")], BS, None)
    rig.gate.configure({"vm-a": QosParams(limit=2)}, {(TARGET, 0): split})
    described = rig.gate.describe()
    worker = Rig()
    try:
        worker.gate.configure_json(described)
        assert worker.gate.keys == {(TARGET, 0): split}
        data, itts = reads_at(worker, [1024, 1032, 0])
        assert answered(worker.send(data)) == [itts[0], itts[2]]     # LBA 0: no VM, no flow
        assert answered(worker.advance(0.5)) == [itts[1]]
    finally:
        worker.loop.close()
