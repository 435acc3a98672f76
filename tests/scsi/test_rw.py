import asyncio
import struct

from support.scsi_rig import BLOCK, BLOCKS, MemoryStore, Rig, read10, read16, sense_of, write10, write16

from vmblock.scsi.task import SAM_STAT_CHECK_CONDITION, SAM_STAT_GOOD, ScsiTask

ILLEGAL = 0x05


def test_write10_then_read10_roundtrip(rig):
    data = bytes(range(256)) * 4
    assert rig.run(write10(7, 2), data).status == SAM_STAT_GOOD
    task = rig.run(read10(7, 2))
    assert task.status == SAM_STAT_GOOD
    assert bytes(task.data_in) == data


def test_read10_beyond_eol(rig):
    task = rig.run(read10(BLOCKS - 1, 2))
    assert task.status == SAM_STAT_CHECK_CONDITION
    assert sense_of(task) == (ILLEGAL, 0x21, 0x00)


def test_read16_lba_minus_one_zero_blocks_is_out_of_range(rig):
    assert sense_of(rig.run(read16(2**64 - 1, 0))) == (ILLEGAL, 0x21, 0x00)


def test_read10_zero_blocks_is_good_without_data(rig):
    task = rig.run(read10(0, 0))
    assert task.status == SAM_STAT_GOOD
    assert not task.data_in


def test_read6_transfer_length_zero_means_256_blocks(rig):
    task = rig.run(bytes([0x08, 0, 0, 0, 0, 0]))
    assert task.status == SAM_STAT_GOOD
    assert len(task.data_in) == 256 * BLOCK
    assert task.cdb_xfer_len == 256 * BLOCK


def test_read10_rdprotect_is_invalid_field(rig):
    task = rig.run(read10(0, 1, flags=0x20))
    assert sense_of(task) == (ILLEGAL, 0x24, 0x00)
    assert task.sense[15] & 0x80 and task.sense[17] == 1


def test_read10_above_max_transfer_length_is_invalid_field(rig):
    assert sense_of(rig.run(read10(0, rig.lu.max_transfer_blocks + 1))) == (ILLEGAL, 0x24, 0)


def test_control_byte_naca_is_invalid_field(rig):
    cdb = bytearray(read10(0, 1))
    cdb[9] = 0x04
    task = rig.run(bytes(cdb))
    assert sense_of(task) == (ILLEGAL, 0x24, 0x00)
    assert task.sense[17] == 9


def test_unknown_opcode_is_invalid_command_operation_code(rig):
    assert sense_of(rig.run(bytes([0xC7, 0, 0, 0, 0, 0]))) == (ILLEGAL, 0x20, 0x00)


def test_read_returns_full_cdb_length_when_edtl_is_smaller(rig):
    task = rig.run(read10(0, 2), edtl=BLOCK)
    assert task.status == SAM_STAT_GOOD
    assert len(task.data_in) == 2 * BLOCK
    assert task.cdb_xfer_len == 2 * BLOCK


def test_write10_fua_flushes_before_status(rig, store):
    rig.run(write10(0, 1, flags=0x08), bytes(BLOCK))
    assert store.flushes == 1


def test_write10_without_fua_does_not_flush(rig, store):
    rig.run(write10(0, 1), bytes(BLOCK))
    assert store.flushes == 0


def test_write_through_lu_flushes_every_write():
    store = MemoryStore()
    rig = Rig(store, write_cache=False)
    rig.run(write10(0, 1), bytes(BLOCK))
    assert store.flushes == 1


def test_write10_short_data_out_writes_the_whole_blocks_received(rig, store):
    task = rig.run(write10(0, 2), b"\xaa" * BLOCK, edtl=BLOCK)
    assert task.status == SAM_STAT_GOOD
    assert task.data_out_len == BLOCK and task.cdb_xfer_len == 2 * BLOCK
    assert store.data[:BLOCK] == b"\xaa" * BLOCK
    assert store.data[BLOCK:2 * BLOCK] == bytes(BLOCK)


def test_write10_partial_block_data_out_is_invalid_field_in_information_unit(rig, store):
    task = rig.run(write10(0, 1), b"\xaa" * 200, edtl=200)
    assert sense_of(task) == (ILLEGAL, 0x0E, 0x03)
    assert store.writes == 0


def test_write10_zero_edtl_is_good_and_writes_nothing(rig, store):
    task = rig.run(write10(0, 1), b"", edtl=0)
    assert task.status == SAM_STAT_GOOD
    assert store.writes == 0


def test_write10_extra_data_out_gathers_only_the_cdb_length(rig):
    task = ScsiTask(lun=0, cdb=write10(0, 1).ljust(16, b"\0"), nexus=rig.a, edtl=10000,
                    write=True)
    assert rig.target.prepare(task)
    assert task.data_out_len == BLOCK


def test_large_read_runs_in_executor(rig, store):
    store.data[:4] = b"abcd"
    task = ScsiTask(lun=0, cdb=read16(0, 1024).ljust(16, b"\0"), nexus=rig.a, edtl=1 << 20)
    assert rig.target.prepare(task)
    pending = rig.target.execute(task)
    assert pending is not None
    asyncio.run(pending)
    assert bytes(task.data_in[:4]) == b"abcd"


def test_large_write_runs_in_executor(rig, store):
    data = b"\x5a" * (1024 * BLOCK)
    task = ScsiTask(lun=0, cdb=write16(10, 1024).ljust(16, b"\0"), nexus=rig.a, edtl=len(data),
                    write=True)
    assert rig.target.prepare(task)
    task.data_out = memoryview(data)
    pending = rig.target.execute(task)
    assert pending is not None
    asyncio.run(pending)
    assert store.data[10 * BLOCK:1034 * BLOCK] == data
    assert not rig.lu.pending_writes


def test_store_error_becomes_medium_error(rig, store):
    def broken(offset, buf):
        raise OSError(5, "EIO")
    store.read_into = broken
    assert sense_of(rig.run(read10(0, 1))) == (0x03, 0x11, 0x00)


def test_read_capacity10(rig):
    task = rig.run(bytes([0x25] + [0] * 9))
    assert struct.unpack(">II", task.data_in) == (BLOCKS - 1, BLOCK)


def test_read_capacity16_reports_lbpme_lbprz_when_unmap_capable(rig):
    task = rig.run(bytes([0x9E, 0x10]) + bytes(8) + struct.pack(">I", 32) + bytes(2))
    assert len(task.data_in) == 32
    assert struct.unpack_from(">QI", task.data_in) == (BLOCKS - 1, BLOCK)
    assert task.data_in[14] & 0xC0 == 0xC0


def test_read_capacity16_without_unmap_reports_no_lbpme():
    rig = Rig(MemoryStore(abilities=frozenset()))
    task = rig.run(bytes([0x9E, 0x10]) + bytes(8) + struct.pack(">I", 32) + bytes(2))
    assert task.data_in[14] == 0


def test_read_capacity16_allocation_length_zero_is_good(rig):
    task = rig.run(bytes([0x9E, 0x10]) + bytes(14))
    assert task.status == SAM_STAT_GOOD
    assert len(task.data_in) == 0


def test_synchronize_cache10_flushes(rig, store):
    task = rig.run(bytes([0x35, 0, 0, 0, 0, 0, 0, 0, 1, 0]))
    assert task.status == SAM_STAT_GOOD
    assert store.flushes == 1


def test_synchronize_cache10_beyond_eol(rig):
    cdb = struct.pack(">BBIxHx", 0x35, 0, BLOCKS, 1)
    assert sense_of(rig.run(cdb)) == (ILLEGAL, 0x21, 0x00)


def test_pre_fetch10_is_good(rig):
    assert rig.run(struct.pack(">BBIxHx", 0x34, 0, 0, 8)).status == SAM_STAT_GOOD


def test_start_stop_unit_stop_flushes(rig, store):
    assert rig.run(bytes([0x1B, 0, 0, 0, 0x00, 0])).status == SAM_STAT_GOOD
    assert store.flushes == 1


def test_start_stop_unit_start_is_good(rig, store):
    assert rig.run(bytes([0x1B, 0, 0, 0, 0x01, 0])).status == SAM_STAT_GOOD
    assert store.flushes == 0


def test_write_without_w_bit_gathers_no_data_and_writes_nothing(rig, store):
    task = ScsiTask(lun=0, cdb=write10(0, 1).ljust(16, b"\0"), nexus=rig.a, edtl=BLOCK)
    assert rig.target.prepare(task)
    assert task.data_out_len == 0
    assert rig.target.execute(task) is None
    assert store.writes == 0
