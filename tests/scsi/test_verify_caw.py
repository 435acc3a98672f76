import struct

from support.scsi_rig import BLOCK, BLOCKS, sense_of

from vmblock.scsi.task import SAM_STAT_GOOD

MISCOMPARE = 0x0E
ILLEGAL = 0x05


def verify10(lba: int, blocks: int, bytchk: int) -> bytes:
    return struct.pack(">BBIxHx", 0x2F, bytchk << 1, lba, blocks)


def caw(lba: int, blocks: int, flags: int = 0) -> bytes:
    return struct.pack(">BBQxxxBxx", 0x89, flags, lba, blocks)


def test_verify10_bytchk0_is_good_without_data(rig):
    task = rig.run(verify10(0, 4, 0))
    assert task.status == SAM_STAT_GOOD
    assert task.data_out_len == 0


def test_verify10_bytchk1_matching_data_is_good(rig, store):
    store.data[:BLOCK] = b"\x11" * BLOCK
    assert rig.run(verify10(0, 1, 1), b"\x11" * BLOCK).status == SAM_STAT_GOOD


def test_verify10_mismatch_reports_offset_in_information(rig, store):
    expect = bytearray(2 * BLOCK)
    expect[700] = 0xFF
    task = rig.run(verify10(0, 2, 1), bytes(expect))
    assert sense_of(task) == (MISCOMPARE, 0x1D, 0x00)
    assert task.sense[0] & 0x80
    assert struct.unpack_from(">I", task.sense, 3)[0] == 700


def test_verify10_bytchk3_compares_one_block_with_each(rig, store):
    store.data[BLOCK:2 * BLOCK] = b"\1" * BLOCK
    task = rig.run(verify10(0, 2, 3), bytes(BLOCK))
    assert sense_of(task)[0] == MISCOMPARE
    assert struct.unpack_from(">I", task.sense, 3)[0] == BLOCK


def test_verify10_beyond_eol(rig):
    assert sense_of(rig.run(verify10(BLOCKS + 1, 0, 1))) == (ILLEGAL, 0x21, 0x00)


def test_verify10_vrprotect_is_invalid_field(rig):
    cdb = bytearray(verify10(0, 1, 0))
    cdb[1] |= 0x20
    assert sense_of(rig.run(bytes(cdb))) == (ILLEGAL, 0x24, 0x00)


def test_compare_and_write_writes_on_match(rig, store):
    store.data[:BLOCK] = b"A" * BLOCK
    task = rig.run(caw(0, 1), b"A" * BLOCK + b"B" * BLOCK)
    assert task.status == SAM_STAT_GOOD
    assert store.data[:BLOCK] == b"B" * BLOCK


def test_compare_and_write_miscompare_leaves_medium_and_reports_offset(rig, store):
    store.data[:2 * BLOCK] = b"A" * (2 * BLOCK)
    verify = bytearray(b"A" * (2 * BLOCK))
    verify[2 * BLOCK - 27] = ord("C")
    task = rig.run(caw(0, 2), bytes(verify) + b"B" * (2 * BLOCK))
    assert sense_of(task) == (MISCOMPARE, 0x1D, 0x00)
    assert struct.unpack_from(">I", task.sense, 3)[0] == 2 * BLOCK - 27
    assert store.data[:2 * BLOCK] == b"A" * (2 * BLOCK)


def test_compare_and_write_zero_blocks_is_good(rig, store):
    assert rig.run(caw(0, 0), b"").status == SAM_STAT_GOOD
    assert store.writes == 0


def test_compare_and_write_data_out_size_must_match(rig):
    assert sense_of(rig.run(caw(0, 1), bytes(BLOCK)))[0] == ILLEGAL


def test_compare_and_write_above_limit_is_invalid_field(rig):
    n = rig.lu.max_compare_write_blocks + 1
    if n <= 255:
        assert sense_of(rig.run(caw(0, n), bytes(2 * n * BLOCK))) == (ILLEGAL, 0x24, 0)


def test_compare_and_write_fua_flushes(rig, store):
    rig.run(caw(0, 1, flags=0x08), bytes(2 * BLOCK))
    assert store.flushes == 1


def test_write_and_verify10_writes_durably(rig, store):
    task = rig.run(struct.pack(">BBIxHx", 0x2E, 0x02, 3, 1), b"\x77" * BLOCK)
    assert task.status == SAM_STAT_GOOD
    assert store.data[3 * BLOCK:4 * BLOCK] == b"\x77" * BLOCK
    assert store.flushes == 1


def orwrite(lba: int, blocks: int, flags: int = 0) -> bytes:
    return struct.pack(">BBQIxx", 0x8B, flags, lba, blocks)


def test_orwrite_ors_data_into_the_medium(rig, store):
    store.data[:BLOCK] = b"\x0f" * BLOCK
    assert rig.run(orwrite(0, 1), b"\xa0" * BLOCK).status == SAM_STAT_GOOD
    assert store.data[:BLOCK] == b"\xaf" * BLOCK


def test_orwrite_beyond_eol(rig):
    assert sense_of(rig.run(orwrite(BLOCKS - 1, 2), bytes(2 * BLOCK))) == (ILLEGAL, 0x21, 0)


def test_orwrite_orprotect_is_invalid_field(rig):
    assert sense_of(rig.run(orwrite(0, 1, flags=0x20), bytes(BLOCK))) == (ILLEGAL, 0x24, 0)


def test_orwrite_waits_for_writes_in_the_executor(rig, store):
    import asyncio

    from vmblock.scsi.task import ScsiTask

    async def scenario():
        big = b"\x01" * (1024 * BLOCK)
        w = ScsiTask(lun=0, cdb=struct.pack(">BBQIxx", 0x8A, 0, 0, 1024), nexus=rig.a,
                     edtl=len(big), write=True)
        assert rig.target.prepare(w)
        w.data_out = memoryview(big)
        write_done = asyncio.ensure_future(rig.target.execute(w))
        await asyncio.sleep(0)
        o = ScsiTask(lun=0, cdb=orwrite(0, 1), nexus=rig.b, edtl=BLOCK, write=True)
        assert rig.target.prepare(o)
        o.data_out = memoryview(b"\x80" * BLOCK)
        pending = rig.target.execute(o)
        assert pending is not None
        await pending
        await write_done

    asyncio.run(scenario())
    assert store.data[:BLOCK] == b"\x81" * BLOCK


def test_read_defect_data10_reports_empty_lists(rig):
    task = rig.run(struct.pack(">BBBxxxxHx", 0x37, 0, 0x18 | 0x05, 32))
    assert bytes(task.data_in) == bytes([0, 0x1D, 0, 0])


def test_read_defect_data12_reports_empty_lists(rig):
    task = rig.run(struct.pack(">BBIIxx", 0xB7, 0x10, 0, 32))
    assert bytes(task.data_in) == bytes([0, 0x10]) + bytes(6)
