"""The SCSI core over the real sparse-file store: the path the server uses."""

import struct

import pytest
from scsi_rig import Rig, read16, sense_of, write16

from vmblock.scsi.task import SAM_STAT_GOOD
from vmblock.store.sparse import SparseFileStore

BLOCK = 512
BLOCKS = 8192


@pytest.fixture
def sparse_rig(tmp_path):
    store = SparseFileStore(str(tmp_path / "disk"), BLOCKS * BLOCK, BLOCK)
    yield Rig(store)
    store.close()


def test_write16_fua_then_read16(sparse_rig):
    data = bytes(range(256)) * 32
    assert sparse_rig.run(write16(100, 16, flags=0x08), data).status == SAM_STAT_GOOD
    assert bytes(sparse_rig.run(read16(100, 16)).data_in) == data


def test_unmap_then_get_lba_status_reports_deallocated(sparse_rig):
    sparse_rig.run(write16(0, 64), b"\xff" * (64 * BLOCK))
    param = struct.pack(">HH4xQI4x", 22, 16, 0, 64)
    assert sparse_rig.run(struct.pack(">BB4xxHx", 0x42, 0, len(param)), param).status == \
        SAM_STAT_GOOD
    data = bytes(sparse_rig.run(struct.pack(">BBQIxx", 0x9E, 0x12, 0, 24)).data_in)
    lba, blocks, status = struct.unpack_from(">QIB", data, 8)
    assert (lba, status) == (0, 1) and blocks >= 64
    assert bytes(sparse_rig.run(read16(0, 64)).data_in) == bytes(64 * BLOCK)


def test_compare_and_write_over_sparse_file(sparse_rig):
    assert sparse_rig.run(struct.pack(">BBQxxxBxx", 0x89, 0, 5, 1),
                          bytes(BLOCK) + b"\x33" * BLOCK).status == SAM_STAT_GOOD
    task = sparse_rig.run(struct.pack(">BBQxxxBxx", 0x89, 0, 5, 1),
                          bytes(BLOCK) + b"\x44" * BLOCK)
    assert sense_of(task) == (0x0E, 0x1D, 0x00)
    assert struct.unpack_from(">I", task.sense, 3)[0] == 0
