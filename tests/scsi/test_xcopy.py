"""EXTENDED COPY(LID1), RECEIVE COPY RESULTS and VPD 8Fh on the SCSI core with in-memory stores
(no remap ability: the copy is reads and writes): parameter-list checks, CSCD resolution only
among the target's LUNs, copy status per nexus and list identifier, the limits reported."""

import struct

import pytest
from support.scsi_rig import BLOCK, MemoryStore, Rig, sense_of

from vmblock.scsi import xcopy
from vmblock.scsi.lu import LogicalUnit
from vmblock.scsi.target import ScsiTarget
from vmblock.scsi.task import SAM_STAT_GOOD

ILLEGAL, COPY_ABORTED = 0x05, 0x0A
OTHER_NAA = 0x6001405A0B1C2D99


def cscd(naa: int, block_size: int = BLOCK) -> bytes:
    d = bytearray(32)
    d[0], d[4], d[5], d[7] = 0xE4, 0x01, 0x03, 8
    d[8:16] = naa.to_bytes(8, "big")
    d[29:32] = block_size.to_bytes(3, "big")
    return bytes(d)


def segment(src, dst, blocks, src_lba, dst_lba, kind=0x02) -> bytes:
    return struct.pack(">BBHHH2xHQQ", kind, 0, 0x18, src, dst, blocks, src_lba, dst_lba)


def xcopy_run(rig, cscds, segs, list_id=0, usage=0b11, lun=0, nexus=None, cut=0):
    c, s = b"".join(cscds), b"".join(segs)
    param = struct.pack(">BBH4xII", list_id, usage << 3, len(c), len(s), 0) + c + s
    param = param[:len(param) - cut]
    cdb = bytes([0x83, 0]) + bytes(8) + struct.pack(">I", len(param)) + bytes(2)
    return rig.run(cdb, param, nexus=nexus, lun=lun)


def receive(rig, action, list_id=0, nexus=None):
    cdb = bytes([0x84, action, list_id]) + bytes(7) + struct.pack(">I", 1024) + bytes(2)
    return rig.run(cdb, nexus=nexus)


@pytest.fixture
def two(rig):
    """The rig's LU 0 and a second LU at LUN 1 of the same target."""
    lu1 = LogicalUnit(MemoryStore(), name="second", serial="fedcba9876543210",
                      naa=0x6001405A0B1C2D4F)
    rig.target.add_lun(1, lu1)
    for nexus in (rig.a, rig.b):
        lu1.ua.pop(nexus, None)
        rig.lu.ua.pop(nexus, None)
    return rig, lu1


def test_copy_between_two_luns_and_copy_status(two):
    rig, lu1 = two
    rig.store.data[:8 * BLOCK] = bytes(range(256)) * (8 * BLOCK // 256)
    t = xcopy_run(rig, [cscd(rig.lu.naa), cscd(lu1.naa)],
                  [segment(0, 1, 4, 0, 10), segment(0, 1, 4, 4, 100)], list_id=7, usage=0)
    assert t.status == SAM_STAT_GOOD, t.sense
    assert lu1.store.data[10 * BLOCK:14 * BLOCK] == rig.store.data[:4 * BLOCK]
    assert lu1.store.data[100 * BLOCK:104 * BLOCK] == rig.store.data[4 * BLOCK:8 * BLOCK]
    data = bytes(receive(rig, 0x00, 7).data_in)
    assert struct.unpack(">IBHBI", data) == (8, 0x01, 2, 0, 8 * BLOCK)
    # held per nexus and list identifier; dropped with the nexus
    assert sense_of(receive(rig, 0x00, 7, nexus=rig.b)) == (ILLEGAL, 0x24, 0)
    rig.target.nexus_removed(rig.a)
    assert rig.target.copy_results == {}


def test_results_are_not_held_without_list_id_usage_00(rig):
    t = xcopy_run(rig, [cscd(rig.lu.naa)], [segment(0, 0, 1, 0, 1)], list_id=3, usage=0b10)
    assert t.status == SAM_STAT_GOOD
    assert sense_of(receive(rig, 0x00, 3)) == (ILLEGAL, 0x24, 0)


def test_a_lun_of_another_target_is_not_reachable(rig):
    other = ScsiTarget("iqn.2026-11.io.vmblock:other")
    foreign = LogicalUnit(MemoryStore(), name="x", serial="0", naa=OTHER_NAA)
    other.add_lun(0, foreign)
    foreign.store.data[:BLOCK] = b"\x42" * BLOCK
    for cscds in ([cscd(OTHER_NAA), cscd(rig.lu.naa)], [cscd(rig.lu.naa), cscd(OTHER_NAA)]):
        t = xcopy_run(rig, cscds, [segment(0, 1, 1, 0, 0)])
        assert sense_of(t) == (COPY_ABORTED, 0x0D, 0x02)
    assert rig.store.data[:BLOCK] == bytes(BLOCK) and foreign.store.writes == 0


@pytest.mark.parametrize("cscds,segs,cut,expect", [
    ([b"\xE0" + bytes(31)], [segment(0, 0, 1, 0, 1)], 0, (ILLEGAL, 0x26, 0x07)),
    (None, [segment(0, 0, 1, 0, 1, kind=0x01)], 0, (ILLEGAL, 0x26, 0x09)),
    (None, [segment(0, 0, 1, 0, 1)] * (xcopy.MAX_SEGMENT_DESCRIPTORS + 1), 0,
     (ILLEGAL, 0x26, 0x08)),
    (None, [segment(0, 0, 1, 0, 1)] * (xcopy.MAX_DESCRIPTOR_LIST_LENGTH // 28), 0,
     (ILLEGAL, 0x1A, 0x00)),
    (None, [segment(0, 0, 1, 0, 1)], 1, (ILLEGAL, 0x1A, 0x00)),
    (None, [segment(0, 1, 1, 0, 1)], 0, (COPY_ABORTED, 0x08, 0x04)),
    (None, [segment(0, 0, 2, 0, 4095)], 0, (COPY_ABORTED, 0x00, 0x00)),
], ids=["cscd-type", "segment-type", "too-many-segments", "list-too-long", "truncated", "index", "capacity"])
def test_parameter_list_errors(rig, cscds, segs, cut, expect):
    t = xcopy_run(rig, cscds or [cscd(rig.lu.naa)], segs, cut=cut)
    assert sense_of(t) == expect


def test_too_many_descriptors(rig):
    t = xcopy_run(rig, [cscd(rig.lu.naa)] * (xcopy.MAX_CSCD_DESCRIPTORS + 1),
                  [segment(0, 0, 1, 0, 1)])
    assert sense_of(t) == (ILLEGAL, 0x26, 0x06)


def test_operating_parameters_and_vpd_8f(rig):
    data = bytes(receive(rig, 0x03).data_in)
    assert struct.unpack_from(">I", data)[0] == len(data) - 4
    assert struct.unpack_from(">HHII", data, 8) == (
        xcopy.MAX_CSCD_DESCRIPTORS, xcopy.MAX_SEGMENT_DESCRIPTORS,
        xcopy.MAX_DESCRIPTOR_LIST_LENGTH, xcopy.MAX_SEGMENT_LENGTH)
    assert data[43] == 2 and set(data[44:46]) == {0x02, 0xE4}
    vpd = bytes(rig.run(bytes([0x12, 0x01, 0x8F, 0x04, 0x00, 0])).data_in)
    assert vpd[1] == 0x8F and struct.unpack_from(">H", vpd, 2)[0] == len(vpd) - 4
    assert struct.unpack_from(">H", vpd, 4)[0] == xcopy.TPC_SUPPORTED_COMMANDS
    listed = vpd[9:9 + vpd[8]]
    assert listed[:3] == bytes([0x83, 1, 0x00]) and listed[3:7] == bytes([0x84, 2, 0x00, 0x03])
    std = bytes(rig.run(bytes([0x12, 0, 0, 0, 96, 0])).data_in)
    assert std[5] & xcopy.INQUIRY_3PC


@pytest.mark.parametrize("src_lba,dst_lba", [(0, 3), (3, 0)])
def test_an_overlapping_copy_inside_one_lun_is_a_memmove(src_lba, dst_lba):
    rig = Rig(MemoryStore(blocks=40000))
    n = rig.lu.max_transfer_blocks + 1000            # two chunks of the data copy
    data = bytes(range(256)) * (n * BLOCK // 256)
    rig.store.data[src_lba * BLOCK:(src_lba + n) * BLOCK] = data
    t = xcopy_run(rig, [cscd(rig.lu.naa)], [segment(0, 0, n, src_lba, dst_lba)])
    assert t.status == SAM_STAT_GOOD
    assert rig.store.data[dst_lba * BLOCK:(dst_lba + n) * BLOCK] == data


def test_a_read_only_or_ejected_lun_is_no_destination(two):
    rig, lu1 = two
    rig.store.data[:BLOCK] = b"\x17" * BLOCK
    lu1.read_only = True
    lu1.state_changed()
    t = xcopy_run(rig, [cscd(rig.lu.naa), cscd(lu1.naa)], [segment(0, 1, 1, 0, 0)])
    assert sense_of(t) == (0x07, 0x27, 0x00)                       # DATA PROTECT
    assert lu1.store.writes == 0
    # the read-only LU may still be the source
    t = xcopy_run(rig, [cscd(lu1.naa), cscd(rig.lu.naa)], [segment(0, 1, 1, 0, 8)])
    assert t.status == SAM_STAT_GOOD, t.sense
    lu1.read_only, lu1.removable = False, True
    lu1.set_medium(False)
    t = xcopy_run(rig, [cscd(lu1.naa), cscd(rig.lu.naa)], [segment(0, 1, 1, 0, 8)])
    assert sense_of(t) == (COPY_ABORTED, 0x0D, 0x02)              # not reachable
