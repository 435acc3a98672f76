import struct

from support.scsi_rig import BLOCK, BLOCKS, sense_of

from vmblock.scsi.task import SAM_STAT_GOOD

ILLEGAL = 0x05
UNIT_ATTENTION = 0x06


def mode_sense6(page: int, pc: int = 0, dbd: bool = False, alloc: int = 255) -> bytes:
    return bytes([0x1A, 0x08 if dbd else 0, (pc << 6) | page, 0, alloc, 0])


def mode_sense10(page: int, pc: int = 0, llbaa: bool = False) -> bytes:
    return struct.pack(">BBBBxxxHx", 0x5A, 0x10 if llbaa else 0, (pc << 6) | page, 0, 255)


def pages_of(data: bytes, header: int, desc_len: int) -> dict[int, bytes]:
    pos, out = header + desc_len, {}
    while pos < len(data):
        out[data[pos] & 0x3F] = data[pos:pos + 2 + data[pos + 1]]
        pos += 2 + data[pos + 1]
    return out


def test_mode_sense6_all_pages_with_block_descriptor(rig):
    data = bytes(rig.run(mode_sense6(0x3F)).data_in)
    assert data[0] == len(data) - 1
    assert data[2] & 0x10                      # DPOFUA
    assert data[3] == 8
    assert struct.unpack_from(">II", data, 4) == (BLOCKS, BLOCK)
    assert set(pages_of(data, 4, 8)) == {0x02, 0x08, 0x0A, 0x1C}


def test_mode_sense6_caching_wce_follows_write_cache(rig):
    data = bytes(rig.run(mode_sense6(0x08, dbd=True)).data_in)
    assert data[3] == 0
    assert pages_of(data, 4, 0)[0x08][2] & 0x04


def test_mode_sense6_changeable_marks_only_wce_and_swp(rig):
    data = bytes(rig.run(mode_sense6(0x3F, pc=1, dbd=True)).data_in)
    pages = pages_of(data, 4, 0)
    assert pages[0x08][2] == 0x04
    control = pages[0x0A]
    assert control[4] == 0x08 and not any(control[2:4] + control[5:])


def test_mode_sense6_saved_values_not_supported(rig):
    assert sense_of(rig.run(mode_sense6(0x08, pc=3))) == (ILLEGAL, 0x39, 0)


def test_mode_sense6_unknown_page_is_invalid_field(rig):
    assert sense_of(rig.run(mode_sense6(0x19))) == (ILLEGAL, 0x24, 0)


def test_mode_sense6_allocation_length_truncates(rig):
    assert len(rig.run(mode_sense6(0x3F, alloc=4)).data_in) == 4


def test_mode_sense10_long_lba_descriptor(rig):
    data = bytes(rig.run(mode_sense10(0x08, llbaa=True)).data_in)
    assert struct.unpack_from(">H", data)[0] == len(data) - 2
    assert data[4] & 0x01
    assert struct.unpack_from(">H", data, 6)[0] == 16
    assert struct.unpack_from(">Q4xI", data, 8) == (BLOCKS, BLOCK)


def caching_select(rig, wce: bool) -> bytes:
    page = bytearray(bytes(rig.run(mode_sense6(0x08, dbd=True)).data_in)[4:])
    page[2] = (page[2] & ~0x04) | (0x04 if wce else 0)
    return bytes(4) + bytes(page)


def test_mode_select6_clears_wce_and_tells_other_nexuses(rig):
    param = caching_select(rig, wce=False)
    task = rig.run(bytes([0x15, 0x10, 0, 0, len(param), 0]), param)
    assert task.status == SAM_STAT_GOOD
    assert rig.lu.write_cache is False
    assert sense_of(rig.run(bytes(6), nexus=rig.b)) == (UNIT_ATTENTION, 0x2A, 0x01)
    assert rig.run(bytes(6), nexus=rig.a).status == SAM_STAT_GOOD


def test_mode_select6_unchangeable_field_is_invalid_field_in_parameter_list(rig):
    param = bytearray(caching_select(rig, wce=True))
    param[4 + 3] = 0x11                  # demand retention priorities are not changeable
    task = rig.run(bytes([0x15, 0x10, 0, 0, len(param), 0]), bytes(param))
    assert sense_of(task) == (ILLEGAL, 0x26, 0)
    assert task.sense[15] == 0x80 and task.sense[17] == 7


def test_mode_select6_save_pages_is_invalid_field_in_cdb(rig):
    param = caching_select(rig, wce=True)
    assert sense_of(rig.run(bytes([0x15, 0x11, 0, 0, len(param), 0]), param)) == \
        (ILLEGAL, 0x24, 0)


def test_mode_select6_wrong_block_length_is_rejected(rig):
    param = bytes([0, 0, 0, 8]) + struct.pack(">II", 0, 4096)
    assert sense_of(rig.run(bytes([0x15, 0x10, 0, 0, len(param), 0]), param)) == \
        (ILLEGAL, 0x26, 0)


def test_wce_chosen_by_the_host_survives_a_lun_reset(rig):
    param = caching_select(rig, wce=False)
    rig.run(bytes([0x15, 0x10, 0, 0, len(param), 0]), param)
    rig.target.task_management("LUN_RESET", rig.a, 0)
    assert rig.lu.write_cache is False


def test_mode_select6_empty_parameter_list_changes_nothing(rig):
    assert rig.run(bytes([0x15, 0x00, 0, 0, 0, 0]), b"").status == SAM_STAT_GOOD
