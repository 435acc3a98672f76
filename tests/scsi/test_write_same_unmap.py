import struct

from support.scsi_rig import BLOCK, BLOCKS, MemoryStore, Rig, sense_of

from vmblock.scsi.task import SAM_STAT_GOOD

ILLEGAL = 0x05


def ws10(lba: int, blocks: int, flags: int = 0) -> bytes:
    return struct.pack(">BBIxHx", 0x41, flags, lba, blocks)


def ws16(lba: int, blocks: int, flags: int = 0) -> bytes:
    return struct.pack(">BBQIxx", 0x93, flags, lba, blocks)


def unmap_list(*ranges: tuple[int, int], desc_len: int | None = None) -> bytes:
    descs = b"".join(struct.pack(">QI4x", lba, n) for lba, n in ranges)
    dl = len(descs) if desc_len is None else desc_len
    return struct.pack(">HH4x", 6 + len(descs), dl) + descs


def unmap_cdb(param_len: int) -> bytes:
    return struct.pack(">BB4xxHx", 0x42, 0, param_len)


def test_write_same10_replicates_the_block(rig, store):
    task = rig.run(ws10(2, 3), b"\x42" * BLOCK)
    assert task.status == SAM_STAT_GOOD
    assert store.data[2 * BLOCK:5 * BLOCK] == b"\x42" * (3 * BLOCK)


def test_write_same_without_store_support_writes_in_chunks():
    store = MemoryStore(abilities=frozenset())
    rig = Rig(store)
    assert rig.run(ws10(0, 300), b"\x42" * BLOCK).status == SAM_STAT_GOOD
    assert store.data[:300 * BLOCK] == b"\x42" * (300 * BLOCK)


def test_write_same10_unmap_deallocates(rig, store):
    store.write(0, memoryview(b"\xff" * (4 * BLOCK)))
    assert rig.run(ws10(0, 4, flags=0x08), bytes(BLOCK)).status == SAM_STAT_GOOD
    assert store.data[:4 * BLOCK] == bytes(4 * BLOCK)
    assert store.mapped[:4] == bytes(4)


def test_write_same10_unmap_without_capability_is_invalid_field():
    rig = Rig(MemoryStore(abilities=frozenset()))
    assert sense_of(rig.run(ws10(0, 1, flags=0x08), bytes(BLOCK))) == (ILLEGAL, 0x24, 0)


def test_write_same10_anchor_is_invalid_field(rig):
    assert sense_of(rig.run(ws10(0, 1, flags=0x18), bytes(BLOCK))) == (ILLEGAL, 0x24, 0)


def test_write_same10_wrprotect_is_invalid_field(rig):
    assert sense_of(rig.run(ws10(0, 1, flags=0x20), bytes(BLOCK))) == (ILLEGAL, 0x24, 0)


def test_write_same10_zero_blocks_means_to_end_of_lu(rig, store):
    store.write((BLOCKS - 3) * BLOCK, memoryview(b"\xff" * (3 * BLOCK)))
    assert rig.run(ws10(BLOCKS - 3, 0, flags=0x08), bytes(BLOCK)).status == SAM_STAT_GOOD
    assert store.data[-3 * BLOCK:] == bytes(3 * BLOCK)


def test_write_same16_beyond_eol(rig):
    assert sense_of(rig.run(ws16(BLOCKS - 1, 2), bytes(BLOCK))) == (ILLEGAL, 0x21, 0)


def test_write_same16_above_limit_is_invalid_field():
    store = MemoryStore(blocks=40000)
    rig = Rig(store)
    n = rig.lu.max_write_same_blocks + 1
    assert sense_of(rig.run(ws16(0, n), bytes(BLOCK))) == (ILLEGAL, 0x24, 0)


def test_write_same16_ndob_writes_zeros_without_data(rig, store):
    store.write(0, memoryview(b"\xff" * BLOCK))
    task = rig.run(ws16(0, 1, flags=0x01), b"", edtl=0)
    assert task.status == SAM_STAT_GOOD
    assert store.data[:BLOCK] == bytes(BLOCK)


def test_unmap_deallocates_every_descriptor(rig, store):
    store.write(0, memoryview(b"\xff" * (10 * BLOCK)))
    param = unmap_list((1, 2), (6, 1))
    assert rig.run(unmap_cdb(len(param)), param).status == SAM_STAT_GOOD
    assert list(store.mapped[:10]) == [1, 0, 0, 1, 1, 1, 0, 1, 1, 1]


def test_unmap_zero_length_parameter_list_is_good(rig):
    assert rig.run(unmap_cdb(0), b"").status == SAM_STAT_GOOD


def test_unmap_short_parameter_list_is_length_error(rig):
    assert sense_of(rig.run(unmap_cdb(4), bytes(4))) == (ILLEGAL, 0x1A, 0)


def test_unmap_descriptor_length_beyond_list_is_length_error(rig):
    param = unmap_list((0, 1), desc_len=32)
    assert sense_of(rig.run(unmap_cdb(len(param)), param)) == (ILLEGAL, 0x1A, 0)


def test_unmap_lba_out_of_range_unmaps_nothing(rig, store):
    store.write(0, memoryview(b"\xff" * BLOCK))
    param = unmap_list((0, 1), (BLOCKS - 1, 2))
    assert sense_of(rig.run(unmap_cdb(len(param)), param)) == (ILLEGAL, 0x21, 0)
    assert store.mapped[0] == 1


def test_unmap_zero_blocks_at_capacity_is_good(rig):
    param = unmap_list((BLOCKS, 0))
    assert rig.run(unmap_cdb(len(param)), param).status == SAM_STAT_GOOD


def test_unmap_too_many_descriptors_is_invalid_field_in_parameter_list(rig):
    n = rig.lu.max_unmap_descriptors + 1
    param = unmap_list(*[(i, 1) for i in range(n)])
    assert sense_of(rig.run(unmap_cdb(len(param)), param)) == (ILLEGAL, 0x26, 0)


def test_unmap_is_not_in_the_table_without_capability():
    rig = Rig(MemoryStore(abilities=frozenset()))
    param = unmap_list((0, 1))
    assert sense_of(rig.run(unmap_cdb(len(param)), param)) == (ILLEGAL, 0x20, 0)


def get_lba_status(lba: int, alloc: int = 24) -> bytes:
    return struct.pack(">BBQIxx", 0x9E, 0x12, lba, alloc)


def test_get_lba_status_reports_mapped_and_deallocated_runs(rig, store):
    store.write(2 * BLOCK, memoryview(b"\1" * (3 * BLOCK)))
    task = rig.run(get_lba_status(0, 8 + 3 * 16))
    data = bytes(task.data_in)
    assert struct.unpack_from(">I", data)[0] == 4 + 3 * 16
    descs = [struct.unpack_from(">QIB", data, 8 + 16 * i) for i in range(3)]
    assert descs == [(0, 2, 1), (2, 3, 0), (5, BLOCKS - 5, 1)]


def test_get_lba_status_beyond_eol(rig):
    assert sense_of(rig.run(get_lba_status(BLOCKS))) == (ILLEGAL, 0x21, 0)


def test_get_lba_status_without_capability_reports_mapped_to_end():
    rig = Rig(MemoryStore(abilities=frozenset()))
    data = bytes(rig.run(get_lba_status(10)).data_in)
    assert struct.unpack_from(">QIB", data, 8) == (10, BLOCKS - 10, 0)
