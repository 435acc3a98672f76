"""SparseFileStore against a real sparse file: zeros for holes, space back on UNMAP, durability."""

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmblock.errors import InvalidArgument, PoolError
from vmblock.store.backend import CAP_LBA_STATUS, CAP_UNMAP, CAP_WRITE_SAME
from vmblock.store.sparse import SparseFileStore

MiB = 1 << 20


@pytest.fixture
def store(tmp_path):
    s = SparseFileStore(str(tmp_path / "disk.img"), 4 * MiB)
    yield s
    s.close()


def read(s, offset, length):
    buf = bytearray(length)
    s.read_into(offset, memoryview(buf))
    return bytes(buf)


def test_declares_thin_capabilities(store):
    assert store.capabilities == {CAP_UNMAP, CAP_WRITE_SAME, CAP_LBA_STATUS}
    assert store.size_bytes == 4 * MiB


def test_unwritten_reads_zeros_and_uses_no_space(store, tmp_path):
    assert read(store, 0, 64 * 1024) == bytes(64 * 1024)
    assert os.stat(tmp_path / "disk.img").st_blocks == 0


def test_write_then_read_into_caller_buffer(store):
    data = os.urandom(8192)
    store.write(512 * 7, memoryview(data))
    buf = bytearray(8192 + 1024)
    view = memoryview(buf)
    store.read_into(512 * 5, view[:len(buf)])
    assert buf[1024:] == data and buf[:1024] == bytes(1024)


def test_unmap_zeroes_and_frees_space(store, tmp_path):
    store.write(0, memoryview(b"\xab" * MiB))
    before = os.stat(tmp_path / "disk.img").st_blocks
    store.unmap(0, MiB)
    assert read(store, 0, MiB) == bytes(MiB)
    assert store.can_punch, "this file system should support PUNCH_HOLE"
    assert os.stat(tmp_path / "disk.img").st_blocks < before


def test_unmap_partial_block_range_zeroes_only_that_range(store):
    store.write(0, memoryview(b"\x11" * 8192))
    store.unmap(512, 1024)
    assert read(store, 0, 8192) == b"\x11" * 512 + bytes(1024) + b"\x11" * (8192 - 1536)


def test_write_same_replicates_one_block(store):
    block = bytes(range(256)) * 2
    store.write_same(3 * MiB - 512 * 3, 512 * 5, memoryview(block))
    assert read(store, 3 * MiB - 512 * 3, 512 * 5) == block * 5
    assert read(store, 3 * MiB - 512 * 4, 512) == bytes(512)


def test_write_same_larger_than_one_chunk(store):
    block = b"\x5a" * 512
    store.write_same(0, 3 * MiB, memoryview(block))
    assert read(store, 0, 3 * MiB) == block * (3 * MiB // 512)


def test_lba_status_reports_data_then_hole(store):
    store.write(MiB, memoryview(b"\x01" * 65536))
    mapped, length = store.lba_status(0)
    assert (mapped, length) == (False, MiB)
    mapped, data_len = store.lba_status(MiB)
    assert mapped and 65536 <= data_len < 3 * MiB
    mapped, hole_len = store.lba_status(MiB + data_len)
    assert not mapped and MiB + data_len + hole_len == 4 * MiB


def test_lba_status_of_trailing_hole_ends_at_size(store):
    assert store.lba_status(4 * MiB - 512) == (False, 512)


def test_resize_grows_and_keeps_data(store):
    store.write(0, memoryview(b"\x42" * 512))
    store.resize(8 * MiB)
    assert store.size_bytes == 8 * MiB
    assert read(store, 0, 512) == b"\x42" * 512
    assert read(store, 8 * MiB - 512, 512) == bytes(512)


def test_resize_refuses_to_shrink(store):
    with pytest.raises(InvalidArgument):
        store.resize(MiB)


def test_reopen_keeps_data_after_flush(tmp_path):
    path = str(tmp_path / "d.img")
    s = SparseFileStore(path, MiB)
    s.write(4096, memoryview(b"durable!" * 64))
    s.flush()
    s.close()
    s = SparseFileStore(path, MiB)
    assert read(s, 4096, 512) == b"durable!" * 64
    s.close()


def test_open_refuses_file_larger_than_vdisk(tmp_path):
    path = tmp_path / "big.img"
    path.write_bytes(bytes(2048))
    with pytest.raises(PoolError):
        SparseFileStore(str(path), 1024)


@pytest.mark.parametrize("size, bs", [(0, 512), (1000, 512), (4096, 1000)])
def test_bad_geometry_is_rejected(tmp_path, size, bs):
    with pytest.raises(InvalidArgument):
        SparseFileStore(str(tmp_path / "x.img"), size, bs)


BLOCKS = 64
ops = st.lists(st.tuples(st.sampled_from(["write", "unmap", "write_same"]),
                         st.integers(0, BLOCKS - 1), st.integers(1, 16), st.integers(0, 255)),
               max_size=25)


@settings(max_examples=60, deadline=None)
@given(ops)
def test_matches_a_bytearray_model(tmp_path_factory, seq):
    path = str(tmp_path_factory.mktemp("model") / "m.img")
    s = SparseFileStore(path, BLOCKS * 512)
    model = bytearray(BLOCKS * 512)
    try:
        for op, lba, n, byte in seq:
            n = min(n, BLOCKS - lba)
            off, length = lba * 512, n * 512
            if op == "write":
                data = bytes([byte]) * length
                s.write(off, memoryview(data))
                model[off:off + length] = data
            elif op == "unmap":
                s.unmap(off, length)
                model[off:off + length] = bytes(length)
            else:
                block = bytes((byte + i) & 0xFF for i in range(512))
                s.write_same(off, length, memoryview(block))
                model[off:off + length] = block * n
        assert read(s, 0, BLOCKS * 512) == bytes(model)
    finally:
        s.close()
