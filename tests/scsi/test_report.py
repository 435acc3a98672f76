import struct

from support.scsi_rig import MemoryStore, Rig, sense_of

from vmblock.scsi.lu import LogicalUnit
from vmblock.scsi.task import SAM_STAT_GOOD

ILLEGAL = 0x05


def report_luns(select: int = 0, alloc: int = 1024) -> bytes:
    return struct.pack(">BxB3xIxx", 0xA0, select, alloc)


def rsoc(option: int, opcode: int = 0, sa: int = 0, rctd: bool = False) -> bytes:
    return struct.pack(">BBBBHIxx", 0xA3, 0x0C, (0x80 if rctd else 0) | option, opcode, sa,
                       4096)


def test_report_luns_lists_configured_luns(rig):
    rig.target.add_lun(300, LogicalUnit(MemoryStore(), name="x", serial="01", naa=0x6001))
    data = bytes(rig.run(report_luns()).data_in)
    assert struct.unpack_from(">I", data)[0] == 16
    assert data[8:16] == bytes(8)
    assert data[16:18] == bytes([0x41, 0x2C])


def test_report_luns_small_allocation_is_invalid_field(rig):
    assert sense_of(rig.run(report_luns(alloc=15))) == (ILLEGAL, 0x24, 0)


def test_report_luns_bad_select_report_is_invalid_field(rig):
    assert sense_of(rig.run(report_luns(select=0x10))) == (ILLEGAL, 0x24, 0)


def test_report_luns_works_on_missing_lun(rig):
    assert rig.run(report_luns(), lun=7).status == SAM_STAT_GOOD


def descriptors(data: bytes, rctd: bool = False):
    length = struct.unpack_from(">I", data)[0]
    step = 20 if rctd else 8
    return [struct.unpack_from(">BxHxBH", data, pos) for pos in range(4, 4 + length, step)]


def test_rsoc_all_lists_read10_and_service_actions(rig):
    descs = descriptors(bytes(rig.run(rsoc(0)).data_in))
    assert (0x28, 0, 0, 10) in descs
    assert (0x9E, 0x10, 1, 16) in descs
    assert (0x5F, 0x03, 1, 10) in descs


def test_rsoc_all_without_unmap_capability_omits_unmap():
    rig = Rig(MemoryStore(abilities=frozenset()))
    assert all(d[0] != 0x42 for d in descriptors(bytes(rig.run(rsoc(0)).data_in)))


def test_rsoc_rctd_adds_timeout_descriptors(rig):
    data = bytes(rig.run(rsoc(0, rctd=True)).data_in)
    for desc in descriptors(data, rctd=True):
        assert desc[2] & 0x02


def test_rsoc_one_command_usage_data_for_write10(rig):
    data = bytes(rig.run(rsoc(1, 0x2A)).data_in)
    assert data[1] & 0x07 == 3
    assert struct.unpack_from(">H", data, 2)[0] == 10
    assert data[4] == 0x2A and data[5] & 0x18 == 0x18


def test_rsoc_one_command_on_service_action_opcode_is_invalid_field(rig):
    assert sense_of(rig.run(rsoc(1, 0x9E))) == (ILLEGAL, 0x24, 0)


def test_rsoc_service_action_on_plain_opcode_is_invalid_field(rig):
    assert sense_of(rig.run(rsoc(2, 0x28))) == (ILLEGAL, 0x24, 0)


def test_rsoc_service_action_reports_its_usage(rig):
    data = bytes(rig.run(rsoc(2, 0x9E, 0x12)).data_in)
    assert data[1] & 0x07 == 3 and data[4:6] == bytes([0x9E, 0x12])


def test_rsoc_unsupported_opcode_reports_not_supported(rig):
    data = bytes(rig.run(rsoc(1, 0xC7)).data_in)
    assert data[1] & 0x07 == 1


def test_report_supported_tmfs(rig):
    data = bytes(rig.run(struct.pack(">BBxxxxIxx", 0xA3, 0x0D, 4)).data_in)
    assert data[0] == 0xDA


def test_maintenance_in_unknown_action_points_at_byte_1(rig):
    task = rig.run(struct.pack(">BBxxxxIxx", 0xA3, 0x05, 64))
    assert sense_of(task) == (ILLEGAL, 0x24, 0)
    assert task.sense[15] & 0xC0 == 0xC0 and task.sense[17] == 1
