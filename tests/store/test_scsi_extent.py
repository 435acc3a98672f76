"""The SCSI core over the extent store (the path the server uses), with the SCSI test rig:
FUA writes, UNMAP and GET LBA STATUS at AU granularity, WRITE SAME with UNMAP, COMPARE AND
WRITE, the VPD B0 unmap granularity, and DATA PROTECT 27/07 from a full pool."""

from __future__ import annotations

import struct

import pytest

from support.scsi_rig import Rig, read16, sense_of, write16

from vmblock.meta import Pool
from vmblock.scsi.task import SAM_STAT_GOOD

BLOCK = 512
AU_BLOCKS = 128


@pytest.fixture
def pool(tmp_path):
    p = Pool(str(tmp_path / "pool"), create=True)
    p.config_set("store.capacity_size", "2M")          # 32 AUs
    p.close()
    p = Pool(str(tmp_path / "pool"))
    p.create_vdisk("d", 16 << 20)
    yield p
    p.close()


@pytest.fixture
def rig(pool):
    return Rig(pool.open_store(pool.vdisk("d")))


def unmap_cdb(lba: int, blocks: int) -> tuple[bytes, bytes]:
    param = struct.pack(">HH4xQI4x", 22, 16, lba, blocks)
    return struct.pack(">BB4xxHx", 0x42, 0, len(param)), param


def lba_status(rig, lba: int) -> tuple[int, int, int]:
    data = bytes(rig.run(struct.pack(">BBQIxx", 0x9E, 0x12, lba, 24)).data_in)
    return struct.unpack_from(">QIB", data, 8)


def test_write16_fua_then_read16(rig, pool):
    data = bytes(range(256)) * 32
    commits = pool.store.committer.commits
    assert rig.run(write16(100, 16, flags=0x08), data).status == SAM_STAT_GOOD
    assert pool.store.committer.commits == commits + 1           # FUA: data synced, map committed
    assert bytes(rig.run(read16(100, 16)).data_in) == data


def test_unmap_deallocates_whole_aus_and_zeroes_the_rest(rig):
    rig.run(write16(0, 3 * AU_BLOCKS), b"\xff" * (3 * AU_BLOCKS * BLOCK))
    cdb, param = unmap_cdb(8, 2 * AU_BLOCKS)           # AU 0 partly, AU 1 whole, AU 2 partly
    assert rig.run(cdb, param).status == SAM_STAT_GOOD
    assert lba_status(rig, 0) == (0, AU_BLOCKS, 0)      # still mapped (partly zeroed)
    assert lba_status(rig, AU_BLOCKS) == (AU_BLOCKS, AU_BLOCKS, 1)   # deallocated
    got = bytes(rig.run(read16(0, 3 * AU_BLOCKS)).data_in)
    assert got == b"\xff" * 8 * BLOCK + bytes(2 * AU_BLOCKS * BLOCK) + \
        b"\xff" * (AU_BLOCKS - 8) * BLOCK


def test_write_same_unmap_deallocates(rig):
    rig.run(write16(0, 2 * AU_BLOCKS), b"\x11" * (2 * AU_BLOCKS * BLOCK))
    cdb = struct.pack(">BBQIxx", 0x93, 0x08, 0, 2 * AU_BLOCKS)   # WRITE SAME(16), UNMAP
    assert rig.run(cdb, bytes(BLOCK)).status == SAM_STAT_GOOD
    assert lba_status(rig, 0) == (0, 32768, 1)      # the whole 16 MiB vdisk is unmapped
    assert bytes(rig.run(read16(0, 4)).data_in) == bytes(4 * BLOCK)


def test_compare_and_write_over_the_extent_store(rig):
    assert rig.run(struct.pack(">BBQxxxBxx", 0x89, 0, 5, 1),
                   bytes(BLOCK) + b"\x33" * BLOCK).status == SAM_STAT_GOOD
    task = rig.run(struct.pack(">BBQxxxBxx", 0x89, 0, 5, 1), bytes(BLOCK) + b"\x44" * BLOCK)
    assert sense_of(task) == (0x0E, 0x1D, 0x00)


def test_block_limits_report_the_allocation_unit_as_unmap_granularity(rig):
    data = bytes(rig.run(struct.pack(">BBBHB", 0x12, 1, 0xB0, 64, 0)).data_in)
    assert struct.unpack_from(">I", data, 28)[0] == AU_BLOCKS


def test_full_pool_is_space_allocation_failed_write_protect(rig):
    assert rig.run(write16(0, 1024), b"\x01" * (1024 * BLOCK)).status == SAM_STAT_GOOD
    # 8192 blocks = 4 MiB: 64 AUs needed, 24 of the 32 left
    task = rig.run(write16(1024, 8192), b"\x02" * (8192 * BLOCK))
    assert sense_of(task) == (0x07, 0x27, 0x07)
    assert bytes(rig.run(read16(0, 1024)).data_in) == b"\x01" * (1024 * BLOCK)
