import struct

from support.scsi_rig import MemoryStore, Rig, sense_of

from vmblock.scsi.task import SAM_STAT_GOOD

ILLEGAL = 0x05


def inquiry(evpd: int = 0, page: int = 0, alloc: int = 255) -> bytes:
    return struct.pack(">BBBHB", 0x12, evpd, page, alloc, 0)


def vpd(rig, page: int) -> bytes:
    task = rig.run(inquiry(1, page))
    assert task.status == SAM_STAT_GOOD
    data = bytes(task.data_in)
    assert data[1] == page
    assert len(data) == struct.unpack_from(">H", data, 2)[0] + 4
    return data


def test_standard_inquiry_claims_spc4_format2_hisup_cmdque(rig):
    data = bytes(rig.run(inquiry()).data_in)
    assert data[0] == 0x00
    assert data[2] == 0x06
    assert data[3] == 0x12
    assert data[4] == len(data) - 5
    assert data[7] == 0x02
    assert data[8:16] == b"VMBLOCK "
    assert data[16:32] == b"vdisk".ljust(16)


def test_standard_inquiry_version_descriptors_include_spc4_and_sbc3(rig):
    data = bytes(rig.run(inquiry()).data_in)
    descs = struct.unpack_from(">8H", data, 58)
    assert 0x0460 in descs and 0x04C0 in descs


def test_inquiry_allocation_length_truncates(rig):
    task = rig.run(inquiry(alloc=5))
    assert len(task.data_in) == 5


def test_inquiry_page_code_without_evpd_is_invalid_field(rig):
    assert sense_of(rig.run(inquiry(0, 0x80))) == (ILLEGAL, 0x24, 0x00)


def test_inquiry_unknown_vpd_page_is_invalid_field(rig):
    assert sense_of(rig.run(inquiry(1, 0xC5))) == (ILLEGAL, 0x24, 0x00)


def test_supported_vpd_pages_are_ascending(rig):
    pages = list(vpd(rig, 0x00)[4:])
    assert pages == [0x00, 0x80, 0x83, 0x86, 0x8F, 0xB0, 0xB1, 0xB2]


def test_every_supported_vpd_page_answers(rig):
    for page in vpd(rig, 0x00)[4:]:
        vpd(rig, page)


def test_unit_serial_number_page(rig):
    assert vpd(rig, 0x80)[4:] == b"0123456789abcdef"


def test_device_identification_has_naa_and_target_port_name(rig):
    data = vpd(rig, 0x83)
    pos, found = 4, {}
    while pos < len(data):
        b1, length = data[pos + 1], data[pos + 3]
        found[(b1 >> 4) & 3, b1 & 0xF] = data[pos + 4:pos + 4 + length]
        pos += 4 + length
    assert found[0, 3] == (0x6001405A0B1C2D3E).to_bytes(8, "big")
    assert found[1, 8].rstrip(b"\0") == b"iqn.2026-11.io.vmblock:test,t,0x0001"
    assert found[1, 4] == b"\0\0\0\1"
    assert len(found[1, 8]) % 4 == 0


def test_block_limits_page_reports_unmap_limits_when_unmap_capable(rig):
    data = vpd(rig, 0xB0)
    assert data[3] == 0x3C
    max_xfer, = struct.unpack_from(">I", data, 8)
    max_unmap, max_desc = struct.unpack_from(">II", data, 20)
    max_ws, = struct.unpack_from(">Q", data, 36)
    assert max_xfer == rig.lu.max_transfer_blocks
    assert 0 < max_unmap <= 1024 * 1024 and 0 < max_desc <= 1024 * 1024
    assert max_ws == rig.lu.max_write_same_blocks
    assert data[5] == rig.lu.max_compare_write_blocks


def test_block_limits_page_reports_no_unmap_without_capability():
    rig = Rig(MemoryStore(abilities=frozenset()))
    data = vpd(rig, 0xB0)
    assert struct.unpack_from(">II", data, 20) == (0, 0)


def test_block_device_characteristics_non_rotating(rig):
    assert struct.unpack_from(">H", vpd(rig, 0xB1), 4)[0] == 1


def test_logical_block_provisioning_thin_when_unmap_capable(rig):
    data = vpd(rig, 0xB2)
    assert data[5] & 0xE4 == 0xE4          # LBPU LBPWS LBPWS10 LBPRZ
    assert data[5] & 0x02 == 0             # ANC_SUP
    assert data[6] & 0x07 == 0x02


def test_logical_block_provisioning_full_without_unmap():
    rig = Rig(MemoryStore(abilities=frozenset()))
    data = vpd(rig, 0xB2)
    assert data[5] == 0 and data[6] & 0x07 == 0


def test_inquiry_of_missing_lun_reports_no_logical_unit(rig):
    task = rig.run(inquiry(), lun=5)
    assert task.status == SAM_STAT_GOOD
    assert task.data_in[0] == 0x7F


def test_other_commands_to_missing_lun_are_lu_not_supported(rig):
    assert sense_of(rig.run(bytes(6), lun=5)) == (ILLEGAL, 0x25, 0x00)
